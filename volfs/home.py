"""Where volumes live on the host: the volumes home and the paths derived from it.

Layout (microsandbox's, so volfs works beside a real installation)::

    <home>/volumes/<name>/            a volume (directory kind: its content)
    <home>/volumes/<name>/disk.raw    a disk volume's ext4 image
    <home>/volumes/.locks/<name>.lock per-name lock taken around create/remove
    <home>/volumes/.<name>.*          transient create/remove directories
    <home>/db/msb.db                  microsandbox's registry (used when present)
    <home>/db/volfs.db                volfs's own registry otherwise

The home is an explicit argument if given, else ``$MSB_HOME``, else
``~/.microsandbox``. A ``config.json`` in the home may move the volumes
directory (``{"paths": {"volumes": ...}}``), as microsandbox allows.
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

from volfs.errors import InvalidArgument, error
from volfs.names import host_component

__all__ = ["Home", "resolve_home", "DISK_IMAGE_NAME"]

DISK_IMAGE_NAME = "disk.raw"


@dataclass(frozen=True, slots=True)
class Home:
    """A resolved volumes home. Nothing is created until :meth:`ensure_dirs`."""

    root: Path
    volumes: Path

    @property
    def locks(self) -> Path:
        return self.volumes / ".locks"

    @property
    def db_dir(self) -> Path:
        return self.root / "db"

    @property
    def msb_db(self) -> Path:
        """microsandbox's database: volfs uses it when it exists, never creates it."""
        return self.db_dir / "msb.db"

    @property
    def volfs_db(self) -> Path:
        return self.db_dir / "volfs.db"

    def volume_dir(self, name: str) -> Path:
        return self.volumes / name

    def disk_image(self, name: str) -> Path:
        return self.volumes / name / DISK_IMAGE_NAME

    def lock_file(self, name: str) -> Path:
        return self.locks / host_component("", name, ".lock")

    def ensure_dirs(self) -> None:
        """Create the volumes and lock directories, with a clear error if impossible."""
        for path in (self.root, self.volumes, self.locks):
            try:
                path.mkdir(mode=0o755, parents=True, exist_ok=True)
            except FileExistsError:
                raise error(errno.ENOTDIR, "volumes home path exists and is not a directory", str(path)) from None
            except OSError as exc:
                raise error(exc.errno or errno.EIO, f"cannot create {path.name!r} directory: {exc.strerror}", str(path)) from None
            if not path.is_dir():
                raise error(errno.ENOTDIR, "volumes home path exists and is not a directory", str(path))


def _config_volumes_dir(root: Path, config_path: Path) -> Path | None:
    try:
        raw = config_path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(exc.errno or errno.EIO, f"cannot read config: {exc.strerror}", str(config_path)) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"config file is not valid JSON: {exc}", str(config_path)) from None
    paths = data.get("paths") if isinstance(data, dict) else None
    volumes = paths.get("volumes") if isinstance(paths, dict) else None
    if volumes is None:
        return None
    if not isinstance(volumes, str) or not volumes:
        raise InvalidArgument("config paths.volumes must be a non-empty string", str(config_path))
    return root / Path(volumes).expanduser()


def resolve_home(home: str | os.PathLike[str] | None = None) -> Home:
    """Resolve the volumes home: ``home`` if given, else ``$MSB_HOME``, else ``~/.microsandbox``.

    ``$MSB_CONFIG_PATH`` is honoured only when no explicit home is given (an
    explicit home means "exactly this tree", as tests and tools expect).
    """
    if home is not None:
        root = Path(home)
        config = root / "config.json"
    else:
        env = os.environ.get("MSB_HOME")
        root = Path(env) if env else Path("~/.microsandbox").expanduser()
        env_config = os.environ.get("MSB_CONFIG_PATH")
        config = Path(env_config) if env_config else root / "config.json"
    root = Path(os.path.abspath(root))
    if root.exists() and not root.is_dir():
        raise error(errno.ENOTDIR, "volumes home is not a directory", str(root))
    volumes = _config_volumes_dir(root, config) or root / "volumes"
    return Home(root=root, volumes=Path(os.path.abspath(volumes)))

