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
    threads: RES["critical-dims"]["threads"]
    resources:
        mem_mb=RES["critical-dims"]["mem_mb"],
        runtime=runtime("critical-dims"),
    params:
        config=stage_config("critical-dims"),
        out=folder("manifest"),
    shell:
        "longrope2 critical-dims --config-json {params.config:q} --out {params.out:q} > {log:q} 2>&1"
