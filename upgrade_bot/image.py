"""The project's container image, built with podman on a machine that reaches no image registry.

``make image`` and the image tests (tests/image/) share this recipe (DESIGN.md §9):

1. The base image the Dockerfile names, ``debian:bookworm-slim``, is made here:
   ``debootstrap --variant=minbase bookworm`` from the Debian mirror apt already uses, given the
   apt sources the official image has (bookworm, -updates, -security), tarred and kept under
   ``~/.cache/upgrade-bot/base`` (one tarball per day and mirror), then ``podman import``-ed as
   ``docker.io/library/debian:bookworm-slim``, which ``FROM`` then finds without pulling.
2. ``podman build --format docker --network=host --pull=never``: the Docker format because OCI's
   image config has no HEALTHCHECK; each RUN step sees the host's CA bundle and a pip.conf that
   names it and the host's package index (pip behind this host's TLS-inspecting proxy needs the
   CA), mounted read-only on root's home folder. A mount onto a path the image lacks would leave
   an empty file or folder behind in a layer; ``/root`` exists in every Debian image, so nothing
   of the build's settings reaches the image.
3. Layers are cached between builds in one podman storage (``~/.cache/upgrade-bot/podman`` by
   default; the project's settings from ``upgrade_bot.podman``: runc, cgroupfs): a build after a
   source change redoes the project's layers only. The builder stage is tagged so that pruning
   the previous build's final image keeps the dependency layers and nothing else piles up.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from . import podman

IMAGE = "ghcr.io/upgrade-bot/upgrade-bot"
"""The image's name (the chart's default ``image.repository``); its tag is the version."""
BUILDER_TAG = "localhost/upgrade-bot-builder:cache"
BASE_IMAGE = "docker.io/library/debian:bookworm-slim"
SUITE = "bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_HOME = "/root"
"""Where RUN steps (as root) see the build's pip settings: pip reads ``$HOME/.config/pip/pip.conf``
(pip's documentation, "Configuration": per-user file)."""
REPO = Path(__file__).resolve().parents[1]


class ImageError(Exception):
    """A step of the recipe failed; the message says which, with the end of its output."""


# --- where apt gets Debian from ----------------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    """One source of apt's configuration: ``deb`` URIs, suites, components."""

    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def apt_sources(root: Path = Path("/etc/apt")) -> list[AptSource]:
    """The ``deb`` sources apt uses: one-line ``sources.list`` files and deb822 ``.sources``
    files (sources.list(5)); files with other endings are not read by apt either."""
    files = [root / "sources.list"] if (root / "sources.list").is_file() else []
    parts = root / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    found: list[AptSource] = []
    for path in files:
        text = path.read_text(errors="replace")
        found += _deb822(text) if path.suffix == ".sources" else _one_line(text)
    return found


def _one_line(text: str) -> list[AptSource]:
    found = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()  # drop [options]
        if len(words) >= 3 and words[0] == "deb":
            found.append(AptSource((words[1],), (words[2],), tuple(words[3:])))
    return found


def _deb822(text: str) -> list[AptSource]:
    found = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            found.append(
                AptSource(
                    tuple(fields.get("uris", "").split()),
                    tuple(fields.get("suites", "").split()),
                    tuple(fields.get("components", "").split()),
                )
            )
    return found


def mirror_for(sources: list[AptSource], suite: str = SUITE) -> str:
    """The first mirror that apt takes ``suite``'s main component from."""
    for source in sources:
        if suite in source.suites and "main" in source.components and source.uris:
            return source.uris[0]
    raise ImageError(
        f"apt has no source for Debian {suite} main (/etc/apt/sources.list*): "
        "the base image is made from the mirror apt uses"
    )


def base_apt_sources(sources: list[AptSource], suite: str = SUITE) -> str:
    """The base image's ``/etc/apt/sources.list.d/debian.sources``: the suites the official
    image lists (``SUITE``, ``SUITE-updates``, ``SUITE-security``; docker-debian-artifacts),
    each from the mirror this host's apt takes it from."""
    stanzas = []
    for wanted in (f"{suite} {suite}-updates", f"{suite}-security"):
        names = wanted.split()
        uris = [s.uris[0] for s in sources if s.uris and set(names) & set(s.suites)]
        if not uris:
            continue
        stanzas.append(
            f"Types: deb\nURIs: {uris[0]}\nSuites: {' '.join(names)}\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        )
    return "\n".join(stanzas)


# --- the base image -----------------------------------------------------------------------------


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "upgrade-bot"


def base_tarball_name(mirror: str, day: dt.date) -> str:
    host = re.sub(r"[^A-Za-z0-9.-]+", "-", urlsplit(mirror).netloc or "mirror")
    digest = hashlib.sha256(mirror.encode()).hexdigest()[:8]
    return f"debian-{SUITE}-minbase-{host}-{digest}-{day.isoformat()}.tar"


def base_tarball(
    sources: list[AptSource] | None = None,
    *,
    cache: Path | None = None,
    day: dt.date | None = None,
    log: Path | None = None,
) -> Path:
    """Today's base tarball from this host's Debian mirror, made with debootstrap if it is not
    in the cache yet (older ones are removed then)."""
    sources = apt_sources() if sources is None else sources
    mirror = mirror_for(sources)
    folder = (cache or cache_dir()) / "base"
    folder.mkdir(parents=True, exist_ok=True)
    tarball = folder / base_tarball_name(mirror, day or dt.date.today())
    if tarball.exists():
        return tarball
    debootstrap = debootstrap_path()
    if debootstrap is None:
        raise ImageError("debootstrap is missing (scripts/install-system-deps.sh installs it)")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root to make the base image")
    log = log or folder / "debootstrap.log"
    with tempfile.TemporaryDirectory(dir=folder, prefix="rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        # debootstrap(8): a minimal Debian (apt and its essentials) from the given mirror.
        run([debootstrap, "--variant=minbase", SUITE, str(rootfs), mirror], log=log)
        tidy_rootfs(rootfs, base_apt_sources(sources))
        partial = Path(scratch) / tarball.name
        # Numeric owners: the image's files belong to its own users, not the host's names.
        run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], log=log)
        partial.rename(tarball)
    for old in folder.glob(f"debian-{SUITE}-minbase-*.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)
    return tarball


def debootstrap_path() -> str | None:
    """debootstrap lives in /usr/sbin, which a normal user's PATH lacks."""
    found = shutil.which("debootstrap")
    if found is None and Path("/usr/sbin/debootstrap").is_file():
        found = "/usr/sbin/debootstrap"
    return found


def tidy_rootfs(rootfs: Path, debian_sources: str) -> None:
    """What the official image's build leaves out or sets: downloaded packages and lists, the
    host's name and resolver (podman provides both at run time), apt's sources."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*.log"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    for name in ("etc/hostname", "etc/resolv.conf"):
        (rootfs / name).unlink(missing_ok=True)
    if debian_sources:
        (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
        (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(debian_sources)


def import_base(env: Mapping[str, str], tarball: Path, *, log: Path) -> None:
    """``podman import`` the tarball as ``debian:bookworm-slim`` (with the official image's
    default command)."""
    run(
        ["podman", "import", "--quiet", "--change", 'CMD ["bash"]', str(tarball), BASE_IMAGE],
        env=env,
        log=log,
    )


# --- pip inside the build -----------------------------------------------------------------------


def pip_index_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The package index settings this host's pip uses (``pip config list``, which reads the
    configuration files and ``PIP_*`` variables): ``index-url``, ``extra-index-url``,
    ``trusted-host``. Local ``file:`` indexes are left out: the build cannot see them."""
    env = dict(os.environ if environ is None else environ)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    found: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in ("index-url", "extra-index-url", "trusted-host"):
            found[name] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "trusted-host"):
        variable = "PIP_" + name.upper().replace("-", "_")
        if env.get(variable):
            found[name] = env[variable]
    for name in ("index-url", "extra-index-url"):
        if name in found:
            urls = [u for u in found[name].split() if urlsplit(u).scheme in ("http", "https")]
            if urls:
                found[name] = " ".join(urls)
            else:
                del found[name]
    return found


def build_pip_conf(settings: Mapping[str, str], cert: str | None) -> str:
    lines = ["# pip's settings inside `podman build` (upgrade_bot/image.py)", "[global]"]
    lines += [f"{key} = {value}" for key, value in sorted(settings.items())]
    if cert:
        lines.append(f"cert = {cert}")
    # The home folder is mounted read-only: pip must not try to keep a cache or its self-check.
    lines += ["no-cache-dir = true", "disable-pip-version-check = true"]
    return "\n".join(lines) + "\n"


# --- the build ----------------------------------------------------------------------------------


def project_version(context: Path = REPO) -> str:
    with (context / "pyproject.toml").open("rb") as f:
        return str(tomllib.load(f)["project"]["version"])


@dataclass(frozen=True)
class Built:
    tag: str
    image_id: str
    base_s: float
    """Seconds to have the base image (debootstrap when not cached, plus the import)."""
    build_s: float
    """Seconds ``podman build`` took."""


def podman_environ(storage: Path) -> dict[str, str]:
    """The environment for the podman CLI with the project's settings and storage in
    ``storage``."""
    settings = podman.PodmanService(storage).configure()
    return {**os.environ, **settings}


def build_image(
    storage: Path | None = None,
    *,
    context: Path = REPO,
    tags: tuple[str, ...] = (),
    cache: Path | None = None,
) -> Built:
    """Build ``context``'s Dockerfile into the podman storage at ``storage`` (default: the
    cache's), tagged ``IMAGE:<version>`` and ``tags``. Builds into one storage take turns (a
    lock file there): one build's prune must not catch another's layers half-way."""
    missing = podman.missing_tools()
    if missing:
        raise ImageError(f"missing: {' '.join(missing)} (scripts/install-system-deps.sh)")
    storage = storage or (cache or cache_dir()) / "podman"
    storage.mkdir(parents=True, exist_ok=True)
    with (storage / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(storage, context=context, tags=tags, cache=cache)


def _build(storage: Path, *, context: Path, tags: tuple[str, ...], cache: Path | None) -> Built:
    env = podman_environ(storage)
    log = storage / "build.log"
    log.write_text("")
    version = project_version(context)
    tag = f"{IMAGE}:{version}"
    started = time.monotonic()
    tarball = base_tarball(cache=cache, log=log)
    marker = storage / "base.imported"
    exists = subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env, check=False)
    if exists.returncode != 0 or not marker.exists() or marker.read_text() != tarball.name:
        import_base(env, tarball, log=log)
        marker.write_text(tarball.name)
    base_s = time.monotonic() - started
    common = ["podman", "build", "--format", "docker", "--network=host", "--pull=never"]
    common += ["--build-arg", f"VERSION={version}", "--file", str(context / "Dockerfile")]
    iidfile = storage / "image.id"
    iidfile.unlink(missing_ok=True)
    with build_home(storage) as home:
        common += ["--volume", f"{home}:{BUILD_HOME}:ro"]
        started = time.monotonic()
        # The builder stage under a name of its own first, so that its layers outlive the prune.
        run([*common, "--target", "builder", "--tag", BUILDER_TAG, str(context)], env=env, log=log)
        tagging = [arg for t in (tag, *tags) for arg in ("--tag", t)]
        run([*common, "--iidfile", str(iidfile), *tagging, str(context)], env=env, log=log)
        build_s = time.monotonic() - started
    image_id = iidfile.read_text().strip().removeprefix("sha256:")
    # Earlier builds' final images (untagged now) and their own layers go; images still tagged
    # (another session's) or used by a container stay (podman-image-prune(1)).
    run(["podman", "image", "prune", "--force"], env=env, log=log)
    return Built(tag=tag, image_id=image_id, base_s=base_s, build_s=build_s)


@contextlib.contextmanager
def build_home(storage: Path) -> Iterator[Path]:
    """A home folder for root in the RUN steps: pip.conf (the host's index settings) and the
    host's CA bundle it names."""
    home = storage / "build-home"
    shutil.rmtree(home, ignore_errors=True)
    (home / ".config" / "pip").mkdir(parents=True)
    cert = None
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, home / ".config" / "pip" / "ca-certificates.crt")
        cert = f"{BUILD_HOME}/.config/pip/ca-certificates.crt"
    conf = build_pip_conf(pip_index_settings(), cert)
    (home / ".config" / "pip" / "pip.conf").write_text(conf)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(cmd: list[str], *, log: Path, env: Mapping[str, str] | None = None) -> str:
    """Run one step, its output appended to ``log``; ``ImageError`` with its tail if it fails."""
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        done = subprocess.run(
            cmd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        out.write(done.stdout)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-15:])
        raise ImageError(f"{cmd[0]} {cmd[1]} failed ({done.returncode}); see {log}:\n{tail}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m upgrade_bot.image",
        description="Build the container image with podman, its base made with debootstrap.",
    )
    parser.add_argument(
        "--storage",
        type=Path,
        default=cache_dir() / "podman",
        help="podman storage and settings folder, layers cached there (default: %(default)s)",
    )
    parser.add_argument("--save", type=Path, help="also write the image as a docker-archive tar")
    args = parser.parse_args(argv)
    storage = args.storage.resolve()
    try:
        built = build_image(storage)
        if args.save:
            run(
                ["podman", "save", "--format", "docker-archive", "-o", str(args.save), built.tag],
                env=podman_environ(storage),
                log=storage / "build.log",
            )
    except ImageError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    print(
        f"built {built.tag} ({built.image_id[:12]}): base image {built.base_s:.0f}s, "
        f"podman build {built.build_s:.0f}s"
    )
    settings = " ".join(f"{k}={v}" for k, v in podman.PodmanService(storage).environ().items())
    print(f"podman with its storage: {settings} podman image inspect {built.tag}")
    if args.save:
        print(f"saved: {args.save} (docker load -i {args.save})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
