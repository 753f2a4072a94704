"""Package mapping only; everything else lives in pyproject.toml.

bot/ and engine/ stay at the repository root but install as upgrade_bot.bot and
upgrade_bot.engine, so that their generic names never collide with other top-level packages.
"""

from setuptools import find_packages, setup

ROOTS = {"upgrade_bot": "upgrade_bot", "upgrade_bot.bot": "bot", "upgrade_bot.engine": "engine"}

packages: list[str] = []
for name, path in ROOTS.items():
    packages.append(name)
    packages.extend(f"{name}.{sub}" for sub in find_packages(path))

setup(packages=packages, package_dir=ROOTS)
