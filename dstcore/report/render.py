"""Execute a report notebook with papermill and convert it to HTML (code hidden)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dstcore import DstError
from dstcore.core.io import write_text

KERNEL = "dstcore"


def ensure_kernel(name: str = KERNEL) -> str:
    """Make sure the Jupyter kernel ``name`` runs this Python; install it into sys.prefix if absent."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        from ipykernel.kernelspec import install

        install(kernel_name=name, display_name=name, prefix=sys.prefix)
        return name
    python = Path(spec.argv[0])
    if python.resolve() != Path(sys.executable).resolve() and str(python) != "python":
        raise DstError(f"Jupyter kernel '{name}' runs {python}, not this environment's "
                       f"{sys.executable}; remove it (jupyter kernelspec remove {name}) and retry")
    return name


def render(notebook: Path, executed: Path, html: Path, parameters: dict) -> None:
    """Run ``notebook`` with ``parameters`` into ``executed``, then write ``html`` (no code).

    Both files appear only when the whole notebook ran: a notebook that raises fails with
    papermill's error, leaves no HTML behind and keeps the traceback in
    ``<executed>.failed.ipynb``.
    """
    import nbformat
    import papermill
    from nbconvert import HTMLExporter

    html.unlink(missing_ok=True)
    executed.unlink(missing_ok=True)
    kernel = ensure_kernel()
    executed.parent.mkdir(parents=True, exist_ok=True)
    partial = executed.with_name(f".{executed.stem}.partial.ipynb")  # papermill saves as it goes
    try:
        try:
            papermill.execute_notebook(str(notebook), str(partial), parameters=parameters,
                                       kernel_name=kernel, cwd=str(Path.cwd()),
                                       progress_bar=False)
        except papermill.PapermillExecutionError as err:
            failed = executed.with_name(f"{executed.stem}.failed.ipynb")
            os.replace(partial, failed)
            raise DstError(f"{notebook} failed in cell {err.exec_count}: {err.ename}: "
                           f"{err.evalue} (the executed notebook with the traceback: {failed})"
                           ) from err
        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                                exclude_output_prompt=True)
        body, _ = exporter.from_notebook_node(nbformat.read(partial, as_version=4))
        write_text(html, body)
        os.replace(partial, executed)
    finally:
        partial.unlink(missing_ok=True)
