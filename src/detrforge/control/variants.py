"""A version's inference variants as users drive them: store a built variant's artifact under
``<artifact root>/variants/<sha256>/`` and record it; list what a version has.

The artifact store (file:// or s3://) holds the bytes; the registry's ``version_variants`` table
holds the record. Building and measuring the variants is the detector's and the jobs' work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detrforge.control.jobs import JobService
from detrforge.detector.optimize_specs import OptimizeRequest, OptimizeSpec
from detrforge.detector.sizes import task_of
from detrforge.detector.specs import parse_spec
from detrforge.detector.variants import (
    CPU_VARIANTS,
    GPU_VARIANTS,
    VARIANT_PREFIX,
    BuiltVariant,
    artifact_sha256,
    variant_kind,
)
from detrforge.platform.errors import IntegrityError, InvalidSpecError
from detrforge.platform.storage import open_store
from detrforge.registry.entities import Job, ModelVersion, Principal, VersionVariant
from detrforge.registry.gates import GatePolicy
from detrforge.registry.models import ModelStore
from detrforge.registry.variants import VariantStore

__all__ = ["VariantService", "check_shipped"]


@dataclass
class VariantService:
    """Builds (an optimize job), stores and records variant artifacts; answers what ships."""

    store: VariantStore
    artifact_root: str
    # For optimize: the versions and policies, and the jobs that build on the cluster.
    models: ModelStore | None = None
    jobs: JobService | None = None

    def optimize(
        self, model: str, version: int, request: OptimizeRequest, *, principal: Principal
    ) -> Job:
        """Submit the job that builds ``request.variants`` of the version on its target, times
        each against eager and scores each on the dataset (default: the pinned eval set).

        Raises:
            NotFoundError: no such model, version or target.
            InvalidSpecError: a segmentation model, an unknown variant or one for another
                device, no dataset to score on, or a target no node offers.
        """
        assert self.models is not None and self.jobs is not None, "optimize needs models, jobs"
        found = self.models.get_version(model, version)
        if task_of(found.model_size) == "segmentation":
            raise InvalidSpecError(
                f"version: {model} v{version} is a segmentation model ({found.model_size}); "
                "its variants are not built yet (the ONNX export has no mask head)",
                field="version",
            )
        target = self.jobs.targets.get(request.target)
        names = request.variants or _default_variants(target.resources)
        for i, name in enumerate(names):
            check_shipped(name, target.resources, field=f"variants.{i}")
        if len(set(names)) != len(names):
            raise InvalidSpecError("variants: name each variant once", field="variants")
        dataset, split = request.dataset, request.split
        if dataset is None:
            policy = self.models.get_model(model).policy or {}
            pinned = policy.get("eval") or {}
            if not pinned:
                raise InvalidSpecError(
                    f"dataset: model {model!r} pins no eval set; give a COCO dataset to score "
                    "the variants on (and to calibrate int8 on its train split)",
                    field="dataset",
                )
            dataset = str(pinned["dataset"])
            if "split" not in request.model_fields_set:
                split = pinned.get("split", split)
        fields = request.model_dump(exclude={"dataset", "split", "variants"})
        spec = parse_spec(
            OptimizeSpec,
            {
                **fields,
                "variants": names,
                "dataset": dataset,
                "split": split,
                "checkpoint": found.checkpoint_uri,
                "checkpoint_sha256": found.checkpoint_sha256,
                "model_size": found.model_size,
                "resolution": found.resolution,
                "model_name": model,
                "model_version": version,
                "target_resources": dict(target.resources),
                "num_threads": target.num_threads,
            },
        )
        return self.jobs.submit_optimize(spec, principal=principal)

    def record_optimized(self, job: Job, run_id: str | None) -> None:
        """Record every variant an optimize job built and stored, with what it measured, from
        the job's ``optimize/result.json`` (idempotent: the same bytes under the same name are
        recorded once). The ``on_succeeded`` hook of optimize jobs."""
        if run_id is None or self.jobs is None:
            return
        result = self.jobs.tracker.read_json_artifact(run_id, "optimize/result.json")
        spec = OptimizeSpec.model_validate(job.spec)
        for row in result["variants"]:
            metrics = {
                key: row[key]
                for key in (
                    "e2e_ms",
                    "model_ms",
                    "eager_e2e_ms",
                    "speedup_e2e_p95",
                    "speedup_model_p95",
                    "ap",
                    "ap_change",
                    "within_tolerance",
                )
            }
            metrics.update(
                job_id=job.id,
                target=spec.target,
                eager_ap=result["eager"]["ap"],
                split=result["split"],
                best=result["best"] == row["variant"],
            )
            self.store.add_variant(
                spec.model_name,
                spec.model_version,
                name=row["variant"],
                runtime=row["runtime"],
                precision=row["precision"],
                artifact_uri=row["artifact_uri"],
                model_file=row["model_file"],
                sha256=row["sha256"],
                size_bytes=int(row["size_bytes"]),
                build_seconds=float(row["build_seconds"]),
                recipe=row["recipe"],
                metrics=metrics,
                actor=job.created_by,
            )

    def store_built(
        self,
        model: str,
        version: int,
        built: BuiltVariant,
        *,
        metrics: Mapping[str, Any] | None = None,
        principal: Principal,
    ) -> VersionVariant:
        """Upload ``built``'s folder content-addressed, then record it on the version.

        Raises:
            NotFoundError: no such model or version (nothing is uploaded).
            IntegrityError: the folder's bytes no longer hash to ``built.sha256``.
        """
        self.store.list_variants(model, version)  # NotFoundError before any upload
        if artifact_sha256(built.folder) != built.sha256:
            raise IntegrityError(
                f"variant {built.name} at {built.folder} changed after it was built; rebuild it"
            )
        artifacts = open_store(self.artifact_root)
        prefix = f"{VARIANT_PREFIX}/{built.sha256}"
        artifacts.put_dir(built.folder, prefix)
        return self.store.add_variant(
            model,
            version,
            name=built.name,
            runtime=built.runtime,
            precision=built.precision,
            artifact_uri=artifacts.uri_for(prefix),
            model_file=built.model_file,
            sha256=built.sha256,
            size_bytes=built.size_bytes,
            build_seconds=built.build_seconds,
            recipe=built.recipe,
            metrics=metrics,
            actor=principal.principal,
        )

    def list_variants(self, model: str, version: int) -> list[VersionVariant]:
        return self.store.list_variants(model, version)

    def shipped(
        self, version: ModelVersion, policy: GatePolicy | None, target: str
    ) -> VersionVariant | None:
        """What ``version`` ships on ``target`` under ``policy``: the variant its gate names
        (None: the checkpoint itself).

        Raises:
            InvalidSpecError: the policy has no gate on ``target`` (field ``target``).
            NotFoundError: the version has no such variant built (it was promoted before the
                policy named it).
        """
        gates = {gate.target: gate for gate in policy.targets} if policy else {}
        gate = gates.get(target)
        if gate is None:
            known = ", ".join(sorted(gates)) or "none"
            raise InvalidSpecError(
                f"target: model {version.model_name!r}'s gate policy has no target {target!r} "
                f"(its targets: {known}); leave target out for the checkpoint",
                field="target",
            )
        if gate.variant is None:
            return None
        return self.store.current_variant(version.model_name, version.version, gate.variant)


def _default_variants(resources: Mapping[str, float]) -> list[str]:
    """Every variant for the target's device: the GPU ones too where it asks for a GPU."""
    return list(CPU_VARIANTS) + (list(GPU_VARIANTS) if resources.get("GPU") else [])


def check_shipped(variant: str, resources: Mapping[str, float], *, field: str) -> None:
    """A variant a target may build or ship: one of the catalog's, on the device it has."""
    kind = variant_kind(variant, field=field)
    if kind.device == "cuda" and not resources.get("GPU"):
        raise InvalidSpecError(
            f"{field}: {variant} runs on an NVIDIA GPU and this target asks for none; use a "
            f"CPU variant ({', '.join(CPU_VARIANTS)}) or add GPU to the target's resources",
            field=field,
        )
