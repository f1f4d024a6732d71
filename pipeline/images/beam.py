"""The ``beam`` target: a Linux + BEAM microVM (Debian cloud kernel, busybox init, trimmed erts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline import erlang
from pipeline.config import Settings
from pipeline.erlang import CompiledApp
from pipeline.images import BuildContext


class BeamTarget:
    name = "beam"

    def tool_versions(self, settings: Settings) -> dict[str, str]:
        tc = erlang.host_toolchain()
        return {"otp": tc.otp_version, "erts": tc.erts_version}

    def input_files(self, settings: Settings) -> dict[str, str]:
        return {}

    def compile(self, settings: Settings, out: Path) -> CompiledApp:
        return erlang.compile_app(settings.app_dir, out, cwd=settings.root)

    def build_image(self, ctx: BuildContext) -> dict[str, Any]:
        return {}
