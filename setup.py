"""Package discovery for the tree's layout: `neuromas/`, plus `runtime/` and `grammar/` mapped into it."""

from setuptools import find_packages, setup

MAPPED = {"neuromas.runtime": "runtime", "neuromas.grammar": "grammar"}

packages = find_packages(include=["neuromas", "neuromas.*"])
package_dir = dict(MAPPED)
for package, folder in MAPPED.items():
    packages.append(package)
    for sub in find_packages(where=folder):
        packages.append(f"{package}.{sub}")
        package_dir[f"{package}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"

setup(packages=packages, package_dir=package_dir)
