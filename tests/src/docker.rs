//! Docker for the container tests: images, a private network and containers,
//! every one labelled with the run's unique id and removed when the
//! [`Docker`] is dropped, whether the test passed or panicked.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

/// The label every object of a test run carries: `musketeer.test=<run id>`.
pub const LABEL_KEY: &str = "musketeer.test";

/// Whether a Docker engine answers; the error says why not.
pub fn available() -> Result<(), String> {
    let out = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run docker ({e}): install Docker Engine"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the Docker engine does not answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One test run's Docker objects.
pub struct Docker {
    /// Unique per run: names and the label value start with it.
    pub run_id: String,
    images: Vec<String>,
    networks: Vec<String>,
}

fn run(cmd: &mut Command, input: Option<&[u8]>) -> Result<Vec<u8>> {
    use std::io::Write;
    let shown = format!("{cmd:?}");
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("cannot run {shown}"))?;
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().expect("stdin is piped");
        stdin.write_all(bytes)?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

impl Docker {
    /// A fresh run; fails if no engine answers.
    pub fn new() -> Result<Docker> {
        available().map_err(anyhow::Error::msg)?;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        Ok(Docker {
            run_id: format!("mskt-{}-{nanos:x}", std::process::id()),
            images: Vec::new(),
            networks: Vec::new(),
        })
    }

    fn label(&self) -> String {
        format!("{LABEL_KEY}={}", self.run_id)
    }

    /// This run's name for `what`.
    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.run_id)
    }

    /// `docker <args>`; its standard output, trimmed.
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        let out = run(Command::new("docker").args(args), None)?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// `docker <args>` with `input` on its standard input; its raw output.
    pub fn cmd_with_input(&self, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
        run(Command::new("docker").args(args), Some(input))
    }

    /// Builds `dockerfile` with a context holding `binary` (under its file
    /// name) and an empty `data/`, as packaging/build-images does.
    pub fn build_image(
        &mut self,
        what: &str,
        dockerfile: &Path,
        binary: &Path,
        build_args: &[(&str, &str)],
    ) -> Result<String> {
        let context = tempfile::Builder::new()
            .prefix("musketeer-image-")
            .tempdir()?;
        let file_name = binary.file_name().context("the binary has a file name")?;
        std::fs::copy(binary, context.path().join(file_name))?;
        std::fs::create_dir(context.path().join("data"))?;
        let tag = format!("{}:{}", self.name(what), "test");
        let mut cmd = Command::new("docker");
        // The legacy builder needs nothing but the engine, and FROM scratch pulls nothing.
        cmd.env("DOCKER_BUILDKIT", "0")
            .args([
                "build",
                "--quiet",
                "--label",
                &self.label(),
                "-t",
                &tag,
                "-f",
            ])
            .arg(dockerfile);
        for (k, v) in build_args {
            cmd.arg("--build-arg").arg(format!("{k}={v}"));
        }
        cmd.arg(context.path());
        self.images.push(tag.clone());
        run(&mut cmd, None)?;
        Ok(tag)
    }

    /// Builds the Redis image of `packaging/redis-image` (Debian's
    /// redis-server, FROM scratch) as this run's, removed with the run.
    pub fn build_redis_image(&mut self) -> Result<String> {
        let tag = format!("{}:{}", self.name("redis"), "test");
        self.images.push(tag.clone());
        run(
            Command::new(crate::dist::packaging_file("redis-image")).args([
                "--tag",
                &tag,
                "--label",
                &self.label(),
            ]),
            None,
        )?;
        Ok(tag)
    }

    /// The label of this run's objects, `musketeer.test=<run id>`.
    pub fn run_label(&self) -> String {
        self.label()
    }

    /// The size of an image in bytes, as `docker images` shows it.
    pub fn image_size(&self, tag: &str) -> Result<u64> {
        Ok(self
            .cmd(&["image", "inspect", "-f", "{{.Size}}", tag])?
            .parse()?)
    }

    /// A private network of this run: `--internal`, so that nothing in it
    /// reaches beyond this machine.
    pub fn network(&mut self, what: &str) -> Result<String> {
        let name = self.name(what);
        self.networks.push(name.clone());
        self.cmd(&[
            "network",
            "create",
            "--internal",
            "--label",
            &self.label(),
            &name,
        ])?;
        Ok(name)
    }

    /// `docker run -d --name <run>-<what> --label ... <options> <image> <args>`;
    /// returns the container's name.
    pub fn run_detached(
        &self,
        what: &str,
        options: &[&str],
        image: &str,
        args: &[&str],
    ) -> Result<String> {
        let name = self.name(what);
        let label = self.label();
        let mut all = vec!["run", "-d", "--name", &name, "--label", &label];
        all.extend_from_slice(options);
        all.push(image);
        all.extend_from_slice(args);
        self.cmd(&all)?;
        Ok(name)
    }

    /// A container's log (standard output and error).
    pub fn logs(&self, container: &str) -> String {
        Command::new("docker")
            .args(["logs", container])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// Containers and networks of this run still present.
    pub fn leftovers(&self) -> Result<(Vec<String>, Vec<String>)> {
        let filter = format!("label={}", self.label());
        let lines = |s: String| -> Vec<String> {
            s.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        };
        let containers = lines(self.cmd(&["ps", "-a", "-q", "--filter", &filter])?);
        let networks = lines(self.cmd(&["network", "ls", "-q", "--filter", &filter])?);
        Ok((containers, networks))
    }

    /// Removes every container, network and image of this run.
    pub fn cleanup(&mut self) -> Result<()> {
        let (containers, _) = self.leftovers()?;
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            self.cmd(&args)?;
        }
        let filter = format!("label={}", self.label());
        let networks = self.cmd(&["network", "ls", "-q", "--filter", &filter])?;
        for n in networks.lines().filter(|l| !l.trim().is_empty()) {
            self.cmd(&["network", "rm", n.trim()])?;
        }
        for image in std::mem::take(&mut self.images) {
            // Absent when its build failed.
            let _ = self.cmd(&["image", "rm", "-f", &image]);
        }
        self.networks.clear();
        Ok(())
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        if let Err(e) = self.cleanup() {
            eprintln!("warning: cleaning up Docker run {}: {e:#}", self.run_id);
        }
    }
}
