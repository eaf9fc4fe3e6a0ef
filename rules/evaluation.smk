rule evaluate_training_free:
    """Needle accuracy / needle-PPL / PPL of the base model under one method's factors (no training)."""
    input:
        model=base_model(),
        needles=rules.needles.output.meta,
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
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        cmd=stage_cmd("evaluate"),
        needles=config["needles"],
    shell:
        "{params.cmd} --threads {threads} --model {input.model} --needles $(dirname {input.needles}) "
        "--factors {input.factors} --label {wildcards.method} --stage-label training-free "
        "--out $(dirname {output.metrics}) > {log} 2>&1"


rule table_training_free:
    """training_free.csv / .md / .png: every method at L0, 2x, ... target, before any fine-tuning."""
    input:
        metrics=expand(
            RESULTS / "eval" / "training_free" / "{method}" / "metrics.json",
            method=TRAINING_FREE_METHODS,
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
    log:
        LOGS / "table_training_free.log",
    localrule: True
    conda:
        "../envs/longrope2.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cmd=stage_cmd("tables"),
    shell:
        "{params.cmd} --metrics {input.metrics} --name training_free "
        "--columns method length needle_acc needle_ppl ppl --out $(dirname {output.csv}) > {log} 2>&1"
