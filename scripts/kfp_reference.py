"""Compile a pipeline plan with kfp's own Compiler: the reference tests/golden/vertex_pipeline.yaml comes from.

stackwise writes Vertex PipelineSpecs itself (sdk/pipeline/compile/vertex.py: kfp cannot be installed beside
stackwise[all], its protobuf pins clash with pulumi-policy's), and tests/unit/test_pipeline_compile.py holds
that output equal to what kfp compiles for the same pipeline. Regenerate the golden file in a separate
environment that has kfp:

    python -m venv /tmp/kfp && /tmp/kfp/bin/pip install kfp==2.17.3
    /tmp/kfp/bin/python scripts/kfp_reference.py tests/golden/vertex_pipeline.plan.json tests/golden/vertex_pipeline.yaml

The plan file holds what stackwise.pipeline.compile.Plan holds: the pipeline's name and description, the
image, and each step's name, upstream steps and command (argv).
"""

import json
import sys

from kfp import compiler, dsl


def component(name: str, image: str, argv: list[str]):
    @dsl.container_component
    def step():
        return dsl.ContainerSpec(image=image, command=argv[:3], args=argv[3:])

    step.component_spec.name = name
    return step


def main(plan_path: str, out: str) -> None:
    plan = json.load(open(plan_path, encoding="utf-8"))

    @dsl.pipeline(name=plan["pipeline"], description=plan["description"])
    def pipeline():
        tasks = {}
        for step in plan["steps"]:  # in dependency order
            task = component(step["name"], plan["image"], step["argv"])()
            task.set_display_name(step["name"])
            task.set_caching_options(False)
            for up in step["upstream"]:
                task.after(tasks[up])
            tasks[step["name"]] = task

    compiler.Compiler().compile(pipeline, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
