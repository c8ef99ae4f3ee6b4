"""Install the Debian packages the end-to-end suites need, or say loudly what is missing.

Run by ``make test`` and ``make bench``. As root with apt it installs what is
missing (after ``apt-get update``); otherwise it prints a banner listing the
suites that will be skipped. In CI (``CI=true``) a missing package is an error,
because nothing may be skipped there.
"""

import os
import shutil
import subprocess
import sys

NEEDED = {
    # executable: (debian package, what needs it)
    "nginx": ("nginx", "proxy-mode end-to-end tests and the benchmark's nginx row"),
    "chromium": ("chromium", "real-browser tests"),
    "chromedriver": ("chromium-driver", "real-browser tests"),
    "wrk": ("wrk", "the benchmark"),
}


def missing() -> dict[str, tuple[str, str]]:
    found = {}
    for exe, info in NEEDED.items():
        if shutil.which(exe) is None and not os.path.exists(f"/usr/sbin/{exe}"):
            found[exe] = info
    return found


def main() -> int:
    absent = missing()
    if not absent:
        return 0
    packages = sorted({pkg for pkg, _ in absent.values()})
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"system-deps: installing {' '.join(packages)}", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *packages],
            env=env,
            check=False,
            stdout=subprocess.DEVNULL,
        )
        absent = missing()
    if not absent:
        return 0
    bar = "!" * 72
    print(bar, file=sys.stderr)
    print("SKIPPING: these system packages are missing and could not be installed:", file=sys.stderr)
    for exe, (pkg, why) in sorted(absent.items()):
        print(f"  {pkg:16} ({exe}): {why}", file=sys.stderr)
    print(bar, file=sys.stderr)
    if os.environ.get("CI") == "true":
        print("system-deps: CI=true, nothing may be skipped", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
