"""deployments/README.md's table of pod sizes, placements and deadlines is generated from
prefect.yaml (deployments/sizes.py): it fails here when stale. The README's Kubernetes section
points at it rather than copying sizes."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

from k8s.k8s_support import ROOT, deployments_by_name


def _sizes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sizes", ROOT / "deployments" / "sizes.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_deployments_table_is_generated_from_prefect_yaml() -> None:
    sizes = _sizes()
    text = sizes.README.read_text(encoding="utf-8")
    assert text == sizes.render(text), "stale: uv run python deployments/sizes.py"
    table = text.split(sizes.BEGIN, 1)[1].split(sizes.END, 1)[0]
    for deployment in deployments_by_name().values():
        jv = deployment["work_pool"]["job_variables"]
        row = next(line for line in table.splitlines() if f"/{deployment['name']}` |" in line)
        assert f"{jv['cpu_request']}, {jv['memory_request']} / " in row
        assert f" / {jv['cpu_limit']}, {jv['memory_limit']} |" in row


def test_the_readme_copies_no_pod_size() -> None:
    """The README's Kubernetes section names no request or limit: sizes live in prefect.yaml."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Running on Kubernetes", 1)[1].split("\n## ", 1)[0]
    assert not re.search(r"\b\d+(?:m|Mi|Gi)\b", section), re.findall(r"\b\d+(?:m|Mi|Gi)\b", section)
    assert "deployments/README.md" in section
