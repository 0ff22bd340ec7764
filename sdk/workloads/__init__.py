"""Workloads: the entrypoints that run inside a job, `python -m stackwise.workloads.<kind> --spec FILE`.

They import no control-plane SDK and read and write through fsspec URIs, so the same module
runs in a local process, a SageMaker training job, a Vertex CustomJob or an Azure ML job.
"""
