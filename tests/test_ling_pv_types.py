"""Which PV instance types can run LING: the memory of each type as data, and the 4 GiB limit LING
enforces at start-up (cloudozer/ling core/ling.c: ``if (start_info.nr_pages > 1024*1024)
fatal_error("LING does not support domains larger than 4Gb")``, pages of 4 KiB).

The memory table is checked against EC2's own DescribeInstanceTypes answers (``MemoryInfo.SizeInMiB``)
as moto ships them, so a typo in the table cannot pass."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import moto
import pytest

from pipeline.aws import pv, stack
from pipeline.errors import ConfigError
from tests.project import copy_project
from tests.test_stack import BASE, template

LING = stack.StackParams(**{**BASE.__dict__, "target": "ling"})


def describe_instance_types() -> dict[str, Any]:
    """EC2's DescribeInstanceTypes data for every type, as recorded in moto's resources."""
    data = Path(moto.__file__).parent / "ec2" / "resources" / "instance_types.json.gz"
    loaded: dict[str, Any] = json.loads(gzip.decompress(data.read_bytes()))
    return loaded


def test_memory_of_each_pv_type_is_what_ec2_reports() -> None:
    described = describe_instance_types()
    for name, mib in pv.PV_MEMORY_MIB.items():
        info = described[name]
        assert info["MemoryInfo"]["SizeInMiB"] == mib, name
        assert "paravirtual" in info["SupportedVirtualizationTypes"], name


@pytest.mark.parametrize("instance_type", sorted(pv.PV_MEMORY_MIB))
def test_ling_runs_only_on_pv_types_of_at_most_4_gib(instance_type: str) -> None:
    mib = pv.PV_MEMORY_MIB[instance_type]
    fits = mib * 1024 * 1024 // 4096 <= 1024 * 1024  # LING's own test, in 4 KiB pages
    assert pv.instance_type_fits(instance_type, "pv", "ling") is fits
    assert pv.instance_type_fits(instance_type, "pv", "beam")  # the beam target has no such limit
    if fits:
        pv.check_instance_type(instance_type, "pv", target="ling")
        return
    with pytest.raises(ConfigError) as err:
        pv.check_instance_type(instance_type, "pv", target="ling")
    line = str(err.value)
    assert line.startswith(f'pipeline.toml: deploy.instance_type: "{instance_type}" has {mib} MiB of memory')
    assert "LING stops at start-up in a domain over 4096 MiB" in line and "\n" not in line
    assert "(hint: use one of c1.medium, c3.large, m1.small, m1.medium, m3.medium, t1.micro" in line


def test_ling_types_are_the_small_pv_types() -> None:
    small = {"c1.medium", "c3.large", "m1.small", "m1.medium", "m3.medium", "t1.micro"}
    assert set(pv.LING_INSTANCE_TYPES) == small


@pytest.mark.parametrize("instance_type", ["t3.micro", "m5.large", "m3.4xlarge"])
def test_ling_on_a_type_without_pv_is_refused_as_before(instance_type: str) -> None:
    with pytest.raises(ConfigError, match="cannot boot paravirtual"):
        pv.check_instance_type(instance_type, "pv", target="ling")
    with pytest.raises(ConfigError, match="cannot boot paravirtual"):
        pv.check_instance_type(instance_type, "hvm", target="ling")  # LING has no HVM image


def test_the_ling_stack_allows_only_ling_types_for_pv_colours() -> None:
    for params, allowed in ((LING, pv.LING_INSTANCE_TYPES), (BASE, pv.PV_INSTANCE_TYPES)):
        t = template(params)
        for color in ("Blue", "Green"):
            rule = t["Rules"][f"{color}PvInstanceType"]["Assertions"][0]
            assert rule["Assert"]["Fn::Contains"][0] == list(allowed)
    assert (
        "at most 4 GiB for LING"
        in template(LING)["Rules"]["BluePvInstanceType"]["Assertions"][0]["AssertDescription"]
    )


class NoAws:
    """Clients that fail the test on any use: the refusal must come before any request."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"an AWS client was used ({name}) before the instance type was checked")


@pytest.mark.parametrize("stage", ["ami", "deploy"])
def test_ami_and_deploy_refuse_a_large_type_for_ling_before_any_request(stage: str, tmp_path: Path) -> None:
    from pipeline import config
    from pipeline.aws import ami, deploy

    settings = config.load(
        copy_project(tmp_path / "p"), overrides=['image.target="ling"', 'deploy.instance_type="m3.large"']
    )
    with pytest.raises(ConfigError, match=r'"m3\.large" has 7680 MiB of memory'):
        if stage == "ami":
            ami.publish(settings, NoAws(), None)  # type: ignore[arg-type]
        else:
            deploy.deploy(settings, NoAws())  # type: ignore[arg-type]
