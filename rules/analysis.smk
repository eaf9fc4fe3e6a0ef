rule critical_dims:
    """Stage 1: critical dimensions and baseline factor curves (geometry only)."""
    output:
        json=RESULTS / "critical_dims" / "critical_dims.json",
        figure=report(
            RESULTS / "critical_dims" / "critical_dims.png",
            caption="../report/critical_dims.rst",
            category="1. Critical dimensions",
        ),
        manifest=RESULTS / "critical_dims" / "manifest.json",
    log:
        LOGS / "critical_dims.log",
    benchmark:
        BENCH / "critical_dims.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        cmd=stage_cmd("critical-dims"),
        geometry=config["model"]["geometry"],
        target_length=config["extension"]["target_length"],
        options=config["critical_dims"],
    shell:
        "{params.cmd} --out $(dirname {output.json}) > {log} 2>&1"
