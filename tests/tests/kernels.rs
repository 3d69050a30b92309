//! Every kernel, end to end on a coordinator and two agents, against the
//! independent references.

#![allow(clippy::needless_range_loop)] // i and j index matrices: the textbook form reads best.

use std::time::Duration;

use musketeer_client::result_bytes;
use musketeer_tests::{reference, Cluster, CoordinatorOptions};
use serde_json::{json, Value};

const JOB_TIMEOUT: Duration = Duration::from_secs(120);

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kernel_matches_its_reference() {
    let cluster = Cluster::start(2, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;

    // fibonacci: a list (with repeats and the big-number path) and a range.
    let ns: Vec<u64> = (0..5000)
        .map(|i| (i * 37) % 400)
        .chain([0, 1, 186, 187, 5000])
        .collect();
    let fib_list = c
        .submit(&json!({"kernel": "fibonacci", "n": ns}))
        .await
        .unwrap();
    let fib_range = c
        .submit(&json!({"kernel": "fibonacci", "range": {"start": 90, "end": 1300}}))
        .await
        .unwrap();
    // factorial: the SPEC's example.
    let fact = c
        .submit(&json!({"kernel": "factorial", "n": 20000}))
        .await
        .unwrap();
    // matmul: explicit operands.
    let a: Vec<Vec<f64>> = (0..37)
        .map(|i| {
            (0..23)
                .map(|j| ((i * 23 + j) % 17) as f64 / 7.0 - 1.0)
                .collect()
        })
        .collect();
    let b: Vec<Vec<f64>> = (0..23)
        .map(|i| {
            (0..41)
                .map(|j| ((i * 41 + j) % 13) as f64 / 3.0 - 2.0)
                .collect()
        })
        .collect();
    let mm = c
        .submit(&json!({"kernel": "matmul", "a": a, "b": b}))
        .await
        .unwrap();
    // wordcount: both rules.
    let text = "Don't panic. The cat's hat; THE CAT's mat! rock''n roll, ÉCOLE école — x y z x. Über über 中文 the";
    let wc = c
        .submit(&json!({"kernel": "wordcount", "text": text, "top": 3}))
        .await
        .unwrap();
    let wc_ws = c
        .submit(&json!({"kernel": "wordcount", "text": text, "split": "whitespace", "min_len": 3, "top": 100}))
        .await
        .unwrap();

    let got = c.result(&fib_list, JOB_TIMEOUT).await.unwrap();
    assert_eq!(strings(&got["values"]), reference::fibonacci(&ns));

    let got = c.result(&fib_range, JOB_TIMEOUT).await.unwrap();
    assert_eq!(
        strings(&got["values"]),
        reference::fibonacci(&(90..1300).collect::<Vec<_>>())
    );

    let got = c.result(&fact, JOB_TIMEOUT).await.unwrap();
    let want = reference::factorial(20000);
    assert_eq!(got["n"], 20000);
    assert_eq!(got["digits"], 77338);
    assert_eq!(got["value"].as_str().unwrap(), want);

    let got = c.result(&mm, JOB_TIMEOUT).await.unwrap();
    let want = reference::matmul(&a, &b);
    let rows = got["c"].as_array().unwrap();
    assert_eq!(rows.len(), 37);
    for (i, row) in rows.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), 41);
        for (j, v) in row.iter().enumerate() {
            assert!(
                reference::close(v.as_f64().unwrap(), want[i][j]),
                "c[{i}][{j}]"
            );
        }
    }

    let got = c.result(&wc, JOB_TIMEOUT).await.unwrap();
    let (total, list) = reference::wordcount(text.as_bytes(), 1, false, false);
    assert_eq!(got["total_words"], total);
    assert_eq!(got["distinct"], list.len() as u64);
    assert_eq!(got["top"], json!(list[..3]));

    let got = c.result(&wc_ws, JOB_TIMEOUT).await.unwrap();
    let (total, list) = reference::wordcount(text.as_bytes(), 3, true, true);
    assert_eq!(got["total_words"], total);
    assert_eq!(got["top"], json!(list));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_wordcount_tsv_and_npy() {
    let cluster = Cluster::start(2, CoordinatorOptions::default(), &[])
        .await
        .unwrap();
    let c = &cluster.coordinator;
    let client = c.client();

    // ~12 MiB of text, so the upload is cut into several chunks, with
    // multi-byte characters and apostrophes crossing many chunk boundaries.
    let words = [
        "alpha",
        "Beta",
        "don't",
        "Ünïcode",
        "rock’n",
        "x1",
        "42",
        "ÉTÉ",
        "naïve",
        "o'clock",
    ];
    let mut text = String::new();
    let mut i = 0u64;
    while text.len() < 12 << 20 {
        i = i
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        text.push_str(words[(i >> 33) as usize % words.len()]);
        text.push(if i.is_multiple_of(7) { '\n' } else { ' ' });
    }
    let resp = client
        .send(
            client
                .request(reqwest::Method::POST, "/v1/jobs/wordcount?min_len=2&top=5")
                .body(text.clone().into_bytes()),
        )
        .await
        .unwrap();
    let v: Value = resp.json().await.unwrap();
    assert!(v["tasks"].as_u64().unwrap() >= 3, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let got = c.result(&id, JOB_TIMEOUT).await.unwrap();
    let (total, list) = reference::wordcount(text.as_bytes(), 2, false, false);
    assert_eq!(got["total_words"], total);
    assert_eq!(got["top"], json!(list[..5]));

    let tsv = String::from_utf8(result_bytes(&client, &id, "tsv").await.unwrap()).unwrap();
    let want: String = list.iter().map(|(w, n)| format!("{w}\t{n}\n")).collect();
    assert_eq!(tsv, want);

    // matmul from a seed, as NumPy's .npy.
    let mm = c
        .submit(&json!({"kernel": "matmul", "random": {"m": 20, "k": 30, "n": 10, "seed": 7}}))
        .await
        .unwrap();
    let json_c = c.result(&mm, JOB_TIMEOUT).await.unwrap();
    let npy = result_bytes(&client, &mm, "npy").await.unwrap();
    assert_eq!(&npy[..6], b"\x93NUMPY");
    let header_len = u16::from_le_bytes([npy[8], npy[9]]) as usize;
    let header = std::str::from_utf8(&npy[10..10 + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f8'") && header.contains("(20, 10)"),
        "{header}"
    );
    let data = &npy[10 + header_len..];
    assert_eq!(data.len(), 20 * 10 * 8);
    let rows = json_c["c"].as_array().unwrap();
    for i in 0..20 {
        for j in 0..10 {
            let off = (i * 10 + j) * 8;
            let v = f64::from_le_bytes(data[off..off + 8].try_into().unwrap());
            assert_eq!(v, rows[i][j].as_f64().unwrap());
        }
    }
    // The random operands are a pure function of the seed: check C against
    // the textbook product of the regenerated operands.
    let spec = musketeer_tasks::matmul::RandomMatrices {
        m: 20,
        k: 30,
        n: 10,
        seed: 7,
    };
    let a: Vec<Vec<f64>> = (0..20)
        .map(|i| {
            (0..30)
                .map(|j| musketeer_tasks::matmul::random_a(&spec, i, j))
                .collect()
        })
        .collect();
    let b: Vec<Vec<f64>> = (0..30)
        .map(|i| {
            (0..10)
                .map(|j| musketeer_tasks::matmul::random_b(&spec, i, j))
                .collect()
        })
        .collect();
    let want = reference::matmul(&a, &b);
    for i in 0..20 {
        for j in 0..10 {
            assert!(reference::close(rows[i][j].as_f64().unwrap(), want[i][j]));
        }
    }

    // A result asked for in a format its kernel lacks is a clear 400.
    let err = result_bytes(&client, &mm, "tsv")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unsupported_format"), "{err}");
}
