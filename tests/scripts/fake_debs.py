"""Minimal Debian packages for the data-preparation tests."""

import io
import tarfile


def make_deb(path, package, files, version="1.0", compression="xz"):
    """Writes a .deb: an ar archive of debian-binary, control.tar.* and
    data.tar.* (`compression` "xz" or "gz") holding `files` {path: bytes}.
    """
    def tar(members):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer,
                          mode=f"w:{compression}") as archive:
            for name, data in members.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    control = f"Package: {package}\nVersion: {version}\n".encode()
    members = [("debian-binary", b"2.0\n"),
               (f"control.tar.{compression}", tar({"control": control})),
               (f"data.tar.{compression}", tar(files))]
    with open(path, "wb") as deb:
        deb.write(b"!<arch>\n")
        for name, data in members:
            deb.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}"
                      f"{len(data):<10}`\n".encode())
            deb.write(data + b"\n" * (len(data) % 2))
