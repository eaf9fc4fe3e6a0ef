rule finetune:
    """Mixed context window fine-tuning of one method; identical data and steps for every method."""
    input:
        model=finetune_model,
        corpus=CORPUS_FILES,
        factors=finetune_factors,
    output:
        model=directory(RESULTS / "finetune" / "{ft}" / "model"),
        rope=RESULTS / "finetune" / "{ft}" / "rope.json",
        log=RESULTS / "finetune" / "{ft}" / "train_log.csv",
        manifest=RESULTS / "finetune" / "{ft}" / "manifest.json",
    log:
        LOGS / "finetune_{ft}.log",
    benchmark:
        BENCH / "finetune_{ft}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["finetune"]["threads"]
    resources:
        **multinode("finetune"),
        mem_mb=RES["finetune"]["mem_mb"],
        runtime=runtime("finetune"),
        gpu=RES["finetune"]["gpu"],
        nodes=RES["finetune"]["nodes"],
    params:
        launcher=launcher("finetune"),
        config=stage_config("finetune"),
        corpus=CORPUS,
        checkpoints=lambda wildcards: RESULTS
        / ".checkpoints"
        / f"finetune-{wildcards.ft}",
        no_mixed=lambda wildcards: (
            "--no-mixed" if wildcards.ft.endswith(lr2methods.NO_MIXED_SUFFIX) else ""
        ),
        out=folder("manifest"),
    shell:
        "{params.launcher} longrope2 finetune --config-json {params.config:q} --threads {threads} "
        "--model {input.model:q} "
        "--corpus {params.corpus:q} --factors {input.factors:q} --label {wildcards.ft} {params.no_mixed} "
        "--checkpoint-dir {params.checkpoints:q} --out {params.out:q} > {log:q} 2>&1"


rule evaluate_finetuned:
    """The fine-tuned export evaluated with its own rope parameters (as stock transformers loads it)."""
    input:
        model=rules.finetune.output.model,
        corpus=CORPUS_FILES,
    output:
        metrics=RESULTS / "eval" / "finetuned" / "{ft}" / "metrics.json",
        manifest=RESULTS / "eval" / "finetuned" / "{ft}" / "manifest.json",
    log:
        LOGS / "evaluate_finetuned_{ft}.log",
    benchmark:
        BENCH / "evaluate_finetuned_{ft}.tsv"
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
        "--corpus {params.corpus:q} --label {wildcards.ft} --stage-label after --out {params.out:q} "
        "> {log:q} 2>&1"


rule table_finetune:
    """finetune_comparison.csv: every method before/after the same mid-training, plus the no-mixed ablation."""
    input:
        after=expand(
            RESULTS / "eval" / "finetuned" / "{ft}" / "metrics.json", ft=FINETUNED
        ),
        before=[before_metrics(ft) for ft in FINETUNED],
    output:
        csv=report(
            RESULTS / "tables" / "finetune" / "finetune_comparison.csv",
            caption="../report/finetune.rst",
            category="4. Comparisons",
        ),
        md=RESULTS / "tables" / "finetune" / "finetune_comparison.md",
        figure=RESULTS / "tables" / "finetune" / "finetune_comparison.png",
        manifest=RESULTS / "tables" / "finetune" / "manifest.json",
    log:
        LOGS / "table_finetune.log",
    benchmark:
        BENCH / "table_finetune.tsv"
    localrule: True
    conda:
        "../envs/longrope2.yaml"
    threads: RES["tables"]["threads"]
    resources:
        mem_mb=RES["tables"]["mem_mb"],
        runtime=runtime("tables"),
    params:
        config=stage_config("tables"),
        before=" ".join(shlex.quote(f"{before_metrics(ft)}:{ft}") for ft in FINETUNED),
        out=folder("manifest"),
    shell:
        "longrope2 tables --config-json {params.config:q} --metrics {input.after:q} "
        "--as-before {params.before} --name finetune_comparison "
        "--columns method stage length needle_acc needle_ppl ppl --out {params.out:q} > {log:q} 2>&1"
