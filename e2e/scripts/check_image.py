#!/usr/bin/env python3
"""Checks an OCI image archive of pss-operator against the Dockerfile's last stage.

The Dockerfile's last stage is the one definition of the image (`docker build .` and `make image`
both end in it). This reads that stage's USER, ENTRYPOINT, CMD, EXPOSE and its one COPY, then
checks the archive (OCI layout in a tar: what `buildah push oci-archive:`, `podman save --format
oci-archive` and `docker save` write):

* the image config has exactly that user, entrypoint, command and port; no environment but the
  default PATH both BuildKit and buildah give a FROM scratch image; no labels; linux/amd64;
* its layers hold one regular file, the COPY's destination, owned by 0:0, mode 0755, a static ELF
  executable (no program interpreter) and, with --binary, byte for byte that file;
* it prints the image's digest and sizes (archive, compressed and uncompressed layers).

Standard library only. Exit code 1 with one line per difference.
"""

import argparse
import gzip
import hashlib
import io
import json
import shlex
import struct
import sys
import tarfile

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def last_stage(dockerfile):
    """Instructions of the last stage: [(KEYWORD, rest)], continuation lines joined."""
    lines, cur = [], ""
    for raw in open(dockerfile, encoding="utf-8"):
        line = raw.rstrip("\n")
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        lines.append((cur + line).strip())
        cur = ""
    starts = [i for i, l in enumerate(lines) if l.split()[0].upper() == "FROM"]
    stage = lines[starts[-1]:]
    out = []
    for l in stage:
        kw, _, rest = l.partition(" ")
        out.append((kw.upper(), rest.strip()))
    return out


def expected(dockerfile):
    stage = last_stage(dockerfile)
    want = {"from": stage[0][1], "user": None, "entrypoint": None, "cmd": None, "ports": set(), "files": []}
    for kw, rest in stage[1:]:
        if kw == "USER":
            want["user"] = rest
        elif kw in ("ENTRYPOINT", "CMD"):
            want[kw.lower()] = json.loads(rest)
        elif kw == "EXPOSE":
            want["ports"] |= {p if "/" in p else p + "/tcp" for p in rest.split()}
        elif kw == "COPY":
            args = [a for a in shlex.split(rest) if not a.startswith("--")]
            want["files"].append(args[-1].lstrip("/"))
        else:
            raise SystemExit(f"check_image.py: the last stage has a {kw}, which this check does not know; teach it")
    return want


class Archive:
    def __init__(self, path):
        self.tar = tarfile.open(path)
        self.names = {m.name.lstrip("./"): m for m in self.tar.getmembers()}

    def read(self, name):
        return self.tar.extractfile(self.names[name.lstrip("./")]).read()

    def blob(self, digest):
        algo, hexd = digest.split(":")
        data = self.read(f"blobs/{algo}/{hexd}")
        assert hashlib.new(algo, data).hexdigest() == hexd, f"blob {digest} does not match its digest"
        return data


def manifest_of(archive):
    index = json.loads(archive.read("index.json"))
    (desc,) = index["manifests"]
    m = json.loads(archive.blob(desc["digest"]))
    if "manifests" in m:  # an index of one manifest
        (desc,) = m["manifests"]
        m = json.loads(archive.blob(desc["digest"]))
    return desc, m


def layer_tar(data, media_type):
    if media_type.endswith("+gzip") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif media_type.endswith("+zstd"):
        raise SystemExit("check_image.py: zstd layers are not supported")
    return data


def static_elf(data):
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return "not a 64-bit ELF file"
    endian = "<" if data[5] == 1 else ">"
    e_type, = struct.unpack_from(endian + "H", data, 16)
    phoff, = struct.unpack_from(endian + "Q", data, 32)
    phentsize, phnum = struct.unpack_from(endian + "HH", data, 54)
    for i in range(phnum):
        p_type, = struct.unpack_from(endian + "I", data, phoff + i * phentsize)
        if p_type == 3:
            return "has a program interpreter (dynamically linked)"
    if e_type not in (2, 3):
        return f"ELF type {e_type} is not an executable"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("archive")
    ap.add_argument("--dockerfile", required=True)
    ap.add_argument("--binary", help="the file the image must hold")
    args = ap.parse_args()

    want = expected(args.dockerfile)
    archive = Archive(args.archive)
    desc, manifest = manifest_of(archive)
    config = json.loads(archive.blob(manifest["config"]["digest"]))
    c = config.get("config") or {}
    errors = []

    def differs(what, got, exp):
        if got != exp:
            errors.append(f"{what}: image has {got!r}, the Dockerfile's last stage says {exp!r}")

    if want["from"].split()[0] != "scratch":
        errors.append(f"the last stage starts FROM {want['from']}, not scratch")
    differs("user", c.get("User"), want["user"])
    differs("entrypoint", c.get("Entrypoint"), want["entrypoint"])
    differs("cmd", c.get("Cmd"), want["cmd"])
    differs("exposed ports", set(c.get("ExposedPorts") or {}), want["ports"])
    if (c.get("Env") or []) not in ([], [DEFAULT_PATH]):
        errors.append(f"environment: {c.get('Env')} (only the default PATH is expected)")
    if c.get("Labels"):
        errors.append(f"labels: {c['Labels']} (none expected)")
    for key in ("WorkingDir", "Volumes", "StopSignal", "Healthcheck", "Shell"):
        if c.get(key):
            errors.append(f"{key}: {c[key]!r} (not set by the Dockerfile)")
    if (config.get("os"), config.get("architecture")) != ("linux", "amd64"):
        errors.append(f"platform {config.get('os')}/{config.get('architecture')}, not linux/amd64")

    files, compressed, uncompressed = {}, 0, 0
    for layer in manifest["layers"]:
        raw = archive.blob(layer["digest"])
        compressed += len(raw)
        data = layer_tar(raw, layer["mediaType"])
        uncompressed += len(data)
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            for m in t.getmembers():
                name = m.name.lstrip("./")
                if not name:
                    continue
                if m.isdir():
                    errors.append(f"layer {layer['digest'][:19]}: directory {name} (only the binary is expected)")
                    continue
                files[name] = (m, t.extractfile(m).read() if m.isfile() else None)
    differs("files", sorted(files), sorted(want["files"]))
    for name, (m, content) in files.items():
        if not m.isfile():
            errors.append(f"{name} is not a regular file")
            continue
        if (m.uid, m.gid, m.mode & 0o7777) != (0, 0, 0o755):
            errors.append(f"{name}: owner {m.uid}:{m.gid} mode {m.mode & 0o7777:o}, expected 0:0 755")
        problem = static_elf(content)
        if problem:
            errors.append(f"{name}: {problem}")
        if args.binary:
            with open(args.binary, "rb") as f:
                if f.read() != content:
                    errors.append(f"{name} is not {args.binary}")

    if errors:
        for e in errors:
            print(f"check_image: {e}", file=sys.stderr)
        sys.exit(1)
    total = sum(m.size for m in archive.tar.getmembers())
    print(f"image {desc['digest']}: {len(manifest['layers'])} layer(s), files {sorted(files)}; "
          f"user {c.get('User')}, entrypoint {c.get('Entrypoint')}, cmd {c.get('Cmd')}; "
          f"compressed {compressed / 2**20:.2f} MiB, uncompressed {uncompressed / 2**20:.2f} MiB, "
          f"archive {total / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
