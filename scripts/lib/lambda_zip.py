#!/usr/bin/env python3
"""Writes a Lambda deployment package (zip) for scripts/package-lambda.sh. Standard library only.

The zip holds `bootstrap` (mode 0755), the worker files of a function directory (if any) and a
`function.json` naming the handler. It is deterministic: entries sorted by name, every timestamp
1980-01-01 00:00:00 (the earliest a zip can hold), modes normalised to 0755 or 0644, Unix as the
creating system, fixed deflate level, no extra fields or comment. The same inputs therefore give
the same bytes (with the same zlib).

Lambda's limits are checked: the unzipped size before anything is written, the zipped size once
the zip is complete. The zip is written to a temporary file beside the output and renamed into
place only when it passes, so a failure never leaves a zip at the output path.
"""

import argparse
import json
import os
import stat
import sys
import tempfile
import zipfile

EPOCH = (1980, 1, 1, 0, 0, 0)
# Lambda's quotas for a .zip uploaded directly: 50 MB zipped, 250 MB unzipped. The unzipped figure
# is the one Lambda's API names in bytes ("must be smaller than 262144000 bytes").
MAX_ZIPPED = 50 * 1024 * 1024
MAX_UNZIPPED = 250 * 1024 * 1024
# Worker directories are often working copies: none of these belong in a package.
SKIPPED_NAMES = {"__pycache__", "function.json"}
CHUNK = 1024 * 1024


class PackageError(Exception):
    pass


def mib(n):
    return "%.1f MiB" % (n / (1024 * 1024))


def worker_files(root):
    """(archive name, path, mode) for every file under `root` that goes into the package."""
    entries = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_NAMES)
        for dirname in dirnames:
            if os.path.islink(os.path.join(directory, dirname)):
                raise PackageError("%s is a symbolic link; packages hold regular files only"
                                   % os.path.join(directory, dirname))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(directory, name)
            arcname = os.path.relpath(path, root).replace(os.sep, "/")
            if arcname in SKIPPED_NAMES:
                continue
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                raise PackageError("%s is a symbolic link; packages hold regular files only" % path)
            if not stat.S_ISREG(st.st_mode):
                raise PackageError("%s is not a regular file" % path)
            if arcname == "bootstrap":
                raise PackageError("%s clashes with the runtime: Lambda runs /var/task/bootstrap, "
                                   "which the package builder provides" % path)
            mode = 0o755 if st.st_mode & 0o111 else 0o644
            entries.append((arcname, path, mode))
    return entries


def function_config(config_path, handler):
    config = {}
    if config_path:
        try:
            with open(config_path, "rb") as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            raise PackageError("cannot read %s: %s" % (config_path, e))
        if not isinstance(config, dict):
            raise PackageError("%s is not a JSON object" % config_path)
    config["handler"] = handler
    # Lambda starts /var/task/bootstrap for a provided.al2023 function; recording it makes the
    # unpacked package a function directory that scripts/build-rootfs.sh accepts as is.
    config["runtime"] = "/var/task/bootstrap"
    return (json.dumps(config, indent=2) + "\n").encode("utf-8")


def check_handler(handler, entries):
    """A worker's relative `_HANDLER` is resolved against the task root (WORKER_PROTOCOL.md), so
    it must name an executable file in the package."""
    if handler.startswith("/"):
        # An absolute path names a file outside the task root, such as a layer's under /opt.
        return
    name = handler[2:] if handler.startswith("./") else handler
    for arcname, _, mode in entries:
        if arcname == name:
            if not mode & 0o111:
                raise PackageError("the handler %s is not executable (chmod +x it; a script "
                                   "also needs a #! line)" % handler)
            return
    raise PackageError("the handler %s is not a file of the function directory" % handler)


def zip_info(arcname, mode, size):
    info = zipfile.ZipInfo(arcname, date_time=EPOCH)
    info.create_system = 3  # Unix, so that unzip (and Lambda) apply the mode bits
    info.external_attr = (stat.S_IFREG | mode) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    info.file_size = size
    return info


def write_zip(out, members, max_zipped):
    directory = os.path.dirname(os.path.abspath(out))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lambda-zip-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
                for arcname, source, mode, size in members:
                    with z.open(zip_info(arcname, mode, size), "w") as dest:
                        if isinstance(source, bytes):
                            dest.write(source)
                        else:
                            with open(source, "rb") as f:
                                while True:
                                    chunk = f.read(CHUNK)
                                    if not chunk:
                                        break
                                    dest.write(chunk)
        zipped = os.path.getsize(tmp)
        if zipped > max_zipped:
            raise PackageError("the zip is %d bytes (%s), over the limit of %d bytes (%s) for a "
                               "zip uploaded to Lambda; put large dependencies in a layer or a "
                               "container image" % (zipped, mib(zipped), max_zipped, mib(max_zipped)))
        os.replace(tmp, out)
        return zipped
    except BaseException:
        os.unlink(tmp)
        raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--bootstrap", required=True, help="the runtime executable")
    parser.add_argument("--handler", required=True, help="_HANDLER, Lambda's Handler setting")
    parser.add_argument("--worker-dir", help="a worker's function directory")
    parser.add_argument("--config", help="the function directory's function.json")
    parser.add_argument("--max-zipped", type=int, default=MAX_ZIPPED)
    parser.add_argument("--max-unzipped", type=int, default=MAX_UNZIPPED)
    args = parser.parse_args()

    try:
        # A failed build must not leave an older package at the output path looking like its
        # result.
        if os.path.lexists(args.out):
            os.unlink(args.out)
        entries = worker_files(args.worker_dir) if args.worker_dir else []
        if args.worker_dir:
            check_handler(args.handler, entries)
        entries.append(("bootstrap", args.bootstrap, 0o755))
        members = [(a, p, m, os.path.getsize(p)) for a, p, m in entries]
        config = function_config(args.config, args.handler)
        members.append(("function.json", config, 0o644, len(config)))
        members.sort(key=lambda m: m[0].encode("utf-8"))

        unzipped = sum(m[3] for m in members)
        if unzipped > args.max_unzipped:
            raise PackageError("the unzipped package is %d bytes (%s), over Lambda's limit of %d "
                               "bytes (%s)" % (unzipped, mib(unzipped), args.max_unzipped,
                                               mib(args.max_unzipped)))
        zipped = write_zip(args.out, members, args.max_zipped)
    except (PackageError, OSError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    for arcname, _, mode, size in members:
        print("  %04o %10d %s" % (mode, size, arcname), file=sys.stderr)
    print("%d bytes zipped (%s), %d bytes unzipped (%s)"
          % (zipped, mib(zipped), unzipped, mib(unzipped)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
