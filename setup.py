"""Package discovery for the five rooms; the project metadata lives in pyproject.toml.

Each top-level folder installs as ``featcache.<folder>`` with every sub-package found
under it, so a new sub-package (``pipeline/teachers``) can never be left out of a wheel.
"""

from setuptools import find_packages, setup

ROOMS = ("plumbing", "rawdata", "cache_tools", "pipeline", "train")

packages: list[str] = []
package_dir: dict[str, str] = {}
for room in ROOMS:
    package_dir[f"featcache.{room}"] = room
    packages += [f"featcache.{room}", *(f"featcache.{room}.{sub}" for sub in find_packages(room))]

setup(packages=packages, package_dir=package_dir)
