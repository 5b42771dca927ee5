"""The public surface and the layering rules of the architecture, pinned."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import volfs
import volfs.sync

ROOT = Path(__file__).resolve().parent.parent
STDLIB = set(sys.stdlib_module_names)


def imports_of(path: Path) -> set[str]:
    """Absolute module names a source file imports (relative imports resolved to volfs.*)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = ".".join(path.relative_to(ROOT).with_suffix("").parts[: -node.level])
                found.add(f"{package}.{node.module}" if node.module else package)
            elif node.module:
                found.add(node.module)
    return found


def test_public_names_pinned() -> None:
    assert sorted(volfs.__all__) == sorted([
        "CorruptError", "InvalidArgument", "NamedVolumeMode", "RegistryError", "VolfsError", "Volume",
        "VolumeBuilder", "VolumeBusy", "VolumeConfig", "VolumeExists", "VolumeFs", "VolumeFsHandle",
        "VolumeHandle", "VolumeKind", "VolumeNotFound", "VolumeStatus",
    ])  # fmt: skip
    assert sorted(volfs.sync.__all__) == sorted([
        "NamedVolumeMode", "Volume", "VolumeBuilder", "VolumeConfig", "VolumeFs", "VolumeHandle", "VolumeKind",
        "VolumeStatus",
    ])  # fmt: skip
    for name in volfs.__all__:
        assert getattr(volfs, name) is not None
    for name in volfs.sync.__all__:
        assert getattr(volfs.sync, name) is not None
    assert volfs.VolumeFs is volfs.VolumeFsHandle


def test_importing_volfs_never_imports_fuse() -> None:
    code = "import sys, volfs, volfs.sync, volfs.cli.main; sys.exit(int('pyfuse3' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_ext4_engine_imports_only_stdlib_and_errors() -> None:
    allowed_extra = {"crc32c", "volfs.errors"}
    for path in sorted((ROOT / "volfs" / "ext4").glob("*.py")):
        for mod in imports_of(path):
            top = mod.split(".")[0]
            ok = top in STDLIB or mod in allowed_extra or mod.startswith("volfs.ext4") or top == "__future__"
            assert ok, f"{path.relative_to(ROOT)} imports {mod}: the ext4 engine knows nothing of the rest of volfs"


def test_backends_do_not_import_upper_layers() -> None:
    upper = ("volfs.pathfs", "volfs.fs", "volfs.volume", "volfs.aio", "volfs.cli", "volfs_fuse", "pyfuse3", "trio")
    for path in [ROOT / "volfs" / "backend.py", *sorted((ROOT / "volfs" / "backends").glob("*.py"))]:
        for mod in imports_of(path):
            assert not mod.startswith(upper), f"{path.relative_to(ROOT)} imports {mod} from a layer above it"
