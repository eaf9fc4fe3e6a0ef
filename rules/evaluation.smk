rule evaluate_training_free:
    """Needle accuracy / needle-PPL / PPL of the base model under one method's factors (no training)."""
    input:
        model=base_model(),
        corpus=CORPUS_FILES,
        factors=factors_file,
    output:
        metrics=RESULTS / "eval" / "training_free" / "{method}" / "metrics.json",
        manifest=RESULTS / "eval" / "training_free" / "{method}" / "manifest.json",
    log:
        LOGS / "evaluate_training_free_{method}.log",
    benchmark:
        BENCH / "evaluate_training_free_{method}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["evaluate"]["threads"]
    resources:
        mem_mb=RES["evaluate"]["mem_mb"],
        runtime=runtime("evaluate"),
        gpu=RES["evaluate"]["gpu"],
    params:
        config=stage_config("evaluate"),
        corpus=CORPUS,
        out=folder("manifest"),
    shell:
        "longrope2 evaluate --config-json {params.config:q} --threads {threads} --model {input.model:q} "
        "--corpus {params.corpus:q} --factors {input.factors:q} --label {wildcards.method} "
        "--stage-label training-free --out {params.out:q} > {log:q} 2>&1"


rule table_training_free:
    """training_free.csv / .md / .png: every method at L0, 2x, ... target, before any fine-tuning."""
    input:
        metrics=expand(
            RESULTS / "eval" / "training_free" / "{method}" / "metrics.json",
            method=TRAINING_FREE,
        ),
    output:
        csv=report(
            RESULTS / "tables" / "training_free" / "training_free.csv",
            caption="../report/training_free.rst",
            category="4. Comparisons",
        ),
        md=RESULTS / "tables" / "training_free" / "training_free.md",
        figure=report(
            RESULTS / "tables" / "training_free" / "training_free.png",
            caption="../report/training_free.rst",
            category="4. Comparisons",
        ),
        manifest=RESULTS / "tables" / "training_free" / "manifest.json",
    log:
        LOGS / "table_training_free.log",
    benchmark:
        BENCH / "table_training_free.tsv"
    localrule: True
    conda:
        "../envs/longrope2.yaml"
    threads: RES["tables"]["threads"]
    resources:
        mem_mb=RES["tables"]["mem_mb"],
        runtime=runtime("tables"),
    params:
        config=stage_config("tables"),
        out=folder("manifest"),
    shell:
        "longrope2 tables --config-json {params.config:q} --metrics {input.metrics:q} --name training_free "
        "--columns method length needle_acc needle_ppl ppl --out {params.out:q} > {log:q} 2>&1"
