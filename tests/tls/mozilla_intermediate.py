"""Checks a TLS server against Mozilla's "intermediate" configuration with
SSLyze, bar the certificate chain (a cluster's own CA is in no public trust
store). Prints each issue and exits 1 if any remains.

    python tests/tls/mozilla_intermediate.py HOST PORT [IP]
"""

import sys

from sslyze import (
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)

# The one check the profile makes that a cluster's own CA cannot pass: the
# chain leads to no root in the public trust stores.
CHAIN_ISSUE = "certificate_path_validation"


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    ip = sys.argv[3] if len(sys.argv) > 3 else None
    scanner = Scanner()
    scanner.queue_scans(
        [ServerScanRequest(server_location=ServerNetworkLocation(hostname=host, port=port, ip_address=ip))]
    )
    results = list(scanner.get_results())
    if len(results) != 1 or results[0].scan_status != ServerScanStatusEnum.COMPLETED:
        print(f"the scan did not complete: {results}")
        return 1
    try:
        check_server_against_tls_configuration(
            results[0], MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
        )
    except ServerNotCompliantWithTlsConfiguration as e:
        issues = {k: v for k, v in e.issues.items() if k != CHAIN_ISSUE}
        for k, v in issues.items():
            print(f"{k}: {v}")
        if issues:
            return 1
        print(f"set aside: {CHAIN_ISSUE}: {e.issues.get(CHAIN_ISSUE)}")
    print("compliant with Mozilla's intermediate configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
