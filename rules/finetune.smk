rule finetune:
    """Mixed context window fine-tuning of one method; identical data and steps for every method."""
    input:
        model=base_model(),
        corpus=rules.corpus.output.meta,
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
    retries: 1
    conda:
        "../envs/longrope2.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 120 * attempt,
        gpu=1 if GPU_STAGES else 0,
    params:
        cmd=stage_cmd("finetune"),
        checkpoints=lambda wc: RESULTS / ".checkpoints" / f"finetune-{wc.ft}",
        no_mixed=lambda wc: "--no-mixed" if wc.ft.endswith(NO_MIXED_SUFFIX) else "",
        finetune=config["finetune"],
    shell:
        "{params.cmd} --threads {threads} --model {input.model} --corpus $(dirname {input.corpus}) "
        "--factors {input.factors} --label {wildcards.ft} {params.no_mixed} "
        "--checkpoint-dir {params.checkpoints} --out $(dirname {output.rope}) > {log} 2>&1"


rule evaluate_finetuned:
    """The fine-tuned export evaluated with its own rope parameters (as stock transformers loads it)."""
    input:
        model=rules.finetune.output.model,
        needles=rules.needles.output.meta,
    output:
        metrics=RESULTS / "eval" / "finetuned" / "{ft}" / "metrics.json",
        manifest=RESULTS / "eval" / "finetuned" / "{ft}" / "manifest.json",
    log:
        LOGS / "evaluate_finetuned_{ft}.log",
    benchmark:
        BENCH / "evaluate_finetuned_{ft}.tsv"
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
        "--label {wildcards.ft} --stage-label after --out $(dirname {output.metrics}) > {log} 2>&1"


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
    log:
        LOGS / "table_finetune.log",
    localrule: True
    conda:
        "../envs/longrope2.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cmd=stage_cmd("tables"),
        before=" ".join(f"{before_metrics(ft)}:{ft}" for ft in FINETUNED),
    shell:
        "{params.cmd} --metrics {input.after} --as-before {params.before} --name finetune_comparison "
        "--columns method stage length needle_acc needle_ppl ppl --out $(dirname {output.csv}) > {log} 2>&1"
