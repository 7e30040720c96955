"""Which versions of a model should be loaded: the base path's version directories, filtered by
the model's `model_version_policy` (latest N, all, or specific), as TF Serving's
FileSystemStoragePathSource decides it.
"""

from __future__ import annotations

from pathlib import Path

from tensorflow_serving.config import file_system_storage_path_source_pb2

ServableVersionPolicy = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy


def version_directories(base_path: Path) -> dict[int, Path]:
    """Children of `base_path` whose names are version numbers (`.tmp-2`, `README` are ignored).

    Raises OSError when `base_path` cannot be listed."""
    versions = {}
    for child in base_path.iterdir():
        if child.name.isdigit() and child.is_dir():
            versions[int(child.name)] = child
    return versions


def aspired_versions(policy: ServableVersionPolicy, on_disk: set[int]) -> set[int]:
    """The versions `policy` wants loaded, out of those present on disk."""
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return on_disk & set(policy.specific.versions)
    keep = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    return set(sorted(on_disk, reverse=True)[:keep])


def describe(policy: ServableVersionPolicy) -> str:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return "all versions"
    if choice == "specific":
        return "versions " + ", ".join(str(v) for v in sorted(policy.specific.versions))
    keep = max(policy.latest.num_versions, 1) if choice == "latest" else 1
    return f"latest {keep}"
