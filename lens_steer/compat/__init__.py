"""The third-party internals lens_steer relies on, one module per library, each behind a tested version range
checked when it is imported (:func:`require`). Nothing else in the package touches a private name of these
libraries. This package imports none of its modules itself: each is imported where it is used."""

from __future__ import annotations

from importlib import metadata

__all__ = ["UnsupportedVersion", "require"]


class UnsupportedVersion(ImportError):
    """A library lens_steer needs is missing or installed outside its tested range (one line naming both)."""


def require(distribution: str, supported: str, *, version: str | None = None) -> str:
    """The installed version of ``distribution`` if it lies in ``supported`` (a PEP 440 range), else
    :class:`UnsupportedVersion` (an ``ImportError``) in one line naming both.

    Args:
        distribution: The distribution name as pip knows it, e.g. ``"transformer-lens"``.
        supported: The tested range, e.g. ``">=4.3,<4.4"`` (pre-releases inside it count as inside).
        version: Check this version instead of the installed one (for tests).

    Raises:
        UnsupportedVersion: not installed, or installed outside ``supported``.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    if version is None:
        try:
            version = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            raise UnsupportedVersion(f"lens_steer needs {distribution}{supported}, which is not installed: "
                              f"pip install '{distribution}{supported}'") from None
    try:
        inside = SpecifierSet(supported).contains(Version(version), prereleases=True)
    except InvalidVersion:
        inside = False
    if not inside:
        raise UnsupportedVersion(f"lens_steer is tested with {distribution}{supported}, but {distribution} {version} is "
                          f"installed: pip install '{distribution}{supported}'")
    return version
