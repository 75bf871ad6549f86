"""From a desired model to what a runtime starts (a :class:`LaunchSpec`). Pure."""

from __future__ import annotations

from pathlib import Path

from reconciler.runtimes.base import ContainerOptions, LaunchSpec, render_command

from .desired import DesiredModel


def model_location(model: DesiredModel, resolved_path: str | None = None) -> tuple[str, str]:
    """``({model_path}, {model_dir})``: a path source is used in place; a hub source uses the
    file or snapshot folder the weights cache resolved (``resolved_path``)."""
    path = model.spec.source.path or resolved_path
    if path is None:
        raise ValueError(f"{model.name}: weights are not available locally yet")
    location = Path(path).expanduser()
    directory = location if location.is_dir() or not location.suffix else location.parent
    return str(location), str(directory)


def weights_mount(model_dir: str) -> str:
    """The host folder a container needs for a model's weights, mounted at the same path.

    A hub cache snapshot (``<cache>/models--org--name/snapshots/<commit>/...``) holds links into
    the repo's ``blobs/``: the whole repo folder is mounted so they resolve inside the container
    too. Any other folder (a ``path`` source) is mounted as it is.
    """
    path = Path(model_dir)
    for folder in (path, *path.parents):
        if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
            return str(folder.parent.parent)
    return model_dir


def launch_spec(
    model: DesiredModel,
    generation: int,
    gpus: tuple[int, ...] | None,
    resolved_path: str | None = None,
    extra_args: tuple[str, ...] = (),
    remote: bool = False,
) -> LaunchSpec:
    """``gpus`` is the placement (``None`` = no GPU); ``extra_args`` come from placement too
    (``--tensor-split``). ``remote``: the backend runs on a cluster node (the ray runtime),
    which fills ``{gpus}`` with the GPUs it is given there, and ``{model_path}``/``{model_dir}``
    of a hub source with its own copy of the weights."""
    values = {"name": model.name}
    model_dir = None
    if not (remote and model.spec.source.path is None):
        model_path, model_dir = model_location(model, resolved_path)
        values |= {"model_path": model_path, "model_dir": model_dir}
    if not remote:
        values["gpus"] = ",".join(map(str, gpus or ()))
    command = render_command([*model.engine.command, *model.spec.args, *extra_args], values)
    container = model.spec.container
    options = ContainerOptions(
        shm_size=container.shm_size if container else None,
        memory=container.memory if container else None,
        user=container.user if container else None,
        volumes=tuple(container.volumes) if container else (),
        extra_args=dict(container.extra_args) if container else {},
        network=container.network if container else "host",
        image_pull=model.spec.image_pull or model.engine.image_pull,
    )
    local = model_dir is not None and (model.spec.source.path or resolved_path)
    mounts = (weights_mount(model_dir),) if local else ()
    return LaunchSpec(
        model=model.name,
        spec_hash=model.spec_hash,
        spec=model.effective,
        command=tuple(command),
        # CUDA numbers GPUs by PCI bus like NVML (and placement) only when told to.
        env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID", **model.engine.env, **model.spec.env},
        gpus=gpus,
        health_path=model.engine.health_path,
        startup_timeout=model.spec.startup_timeout,
        generation=generation,
        image=model.engine.image,
        mounts=mounts,
        container=options,
    )
