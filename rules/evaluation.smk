rule evaluate_training_free:
    """Needle accuracy / needle-PPL / PPL of the base model under one method's factors (no training)."""
    input:
        model=training_free_model,
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


rule ruler_data:
    """One RULER task (or the heat map's grid, or passkey) at every evaluation length, sized with the model's
    tokenizer: one job per task (tokenizer and haystack loaded once), given only the keys that task reads.
    """
    input:
        tokenizer=tokenizer(),
        corpus=CORPUS_FILES,
    output:
        samples=expand(
            RULER_DATA / "{task}" / "{length}" / "samples.jsonl",
            length=EVAL_LENGTHS,
            allow_missing=True,
        ),
        task=expand(
            RULER_DATA / "{task}" / "{length}" / "task.json",
            length=EVAL_LENGTHS,
            allow_missing=True,
        ),
        manifest=RULER_DATA / "{task}" / "manifest.json",
    log:
        LOGS / "ruler_data_{task}.log",
    benchmark:
        BENCH / "ruler_data_{task}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["ruler-data"]["threads"]
    resources:
        mem_mb=RES["ruler-data"]["mem_mb"],
        runtime=runtime("ruler-data"),
    params:
        config=ruler_data_config,
        corpus=CORPUS,
        lengths=" ".join(str(L) for L in EVAL_LENGTHS),
        out=folder("manifest"),
    shell:
        "longrope2 ruler-data --config-json {params.config:q} --tokenizer {input.tokenizer:q} "
        "--corpus {params.corpus:q} --task {wildcards.task} --lengths {params.lengths} "
        "--out {params.out:q} > {log:q} 2>&1"


rule ruler_training_free:
    """RULER / heat map / passkey of one method's export, before any fine-tuning, through lm-eval."""
    input:
        model=RESULTS / "models" / "training_free" / "{method}" / "model",
        data=ruler_data_files(),
    output:
        scores=RESULTS / "eval" / "training_free" / "{method}" / "ruler" / "scores.json",
        samples=RESULTS
        / "eval"
        / "training_free"
        / "{method}"
        / "ruler"
        / "samples.jsonl",
        manifest=RESULTS
        / "eval"
        / "training_free"
        / "{method}"
        / "ruler"
        / "manifest.json",
    log:
        LOGS / "ruler_training_free_{method}.log",
    benchmark:
        BENCH / "ruler_training_free_{method}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["ruler"]["threads"]
    resources:
        mem_mb=RES["ruler"]["mem_mb"],
        runtime=runtime("ruler"),
        gpu=RES["ruler"]["gpu"],
    params:
        config=stage_config("ruler"),
        cache=lambda wildcards: RESULTS
        / ".checkpoints"
        / f"ruler-training_free-{wildcards.method}",
        data=ruler_data_dirs(),
        out=folder("manifest"),
    shell:
        "longrope2 ruler --config-json {params.config:q} --threads {threads} --model {input.model:q} "
        "--data {params.data:q} --label {wildcards.method} --stage-label training-free "
        "--cache-dir {params.cache:q} --out {params.out:q} > {log:q} 2>&1"


rule ruler_finetuned:
    """RULER / heat map / passkey of one fine-tuned model (its own rope parameters), through lm-eval."""
    input:
        model=RESULTS / "finetune" / "{ft}" / "model",
        data=ruler_data_files(),
    output:
        scores=RESULTS / "eval" / "finetuned" / "{ft}" / "ruler" / "scores.json",
        samples=RESULTS / "eval" / "finetuned" / "{ft}" / "ruler" / "samples.jsonl",
        manifest=RESULTS / "eval" / "finetuned" / "{ft}" / "ruler" / "manifest.json",
    log:
        LOGS / "ruler_finetuned_{ft}.log",
    benchmark:
        BENCH / "ruler_finetuned_{ft}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["ruler"]["threads"]
    resources:
        mem_mb=RES["ruler"]["mem_mb"],
        runtime=runtime("ruler"),
        gpu=RES["ruler"]["gpu"],
    params:
        config=stage_config("ruler"),
        cache=lambda wildcards: RESULTS
        / ".checkpoints"
        / f"ruler-finetuned-{wildcards.ft}",
        data=ruler_data_dirs(),
        out=folder("manifest"),
    shell:
        "longrope2 ruler --config-json {params.config:q} --threads {threads} --model {input.model:q} "
        "--data {params.data:q} --label {wildcards.ft} --stage-label after "
        "--cache-dir {params.cache:q} --out {params.out:q} > {log:q} 2>&1"


rule table_ruler:
    """The paper's tables from RULER's per-sample scores: Table 2, per task, heat maps, passkey, retention,
    ablations; every cell with its sample count and a 95% interval."""
    input:
        scores=[
            *expand(
                RESULTS
                / "eval"
                / "training_free"
                / "{method}"
                / "ruler"
                / "scores.json",
                method=RULER_TRAINING_FREE,
            ),
            *expand(
                RESULTS / "eval" / "finetuned" / "{ft}" / "ruler" / "scores.json",
                ft=FINETUNED,
            ),
        ],
        suites=[
            *expand(
                RESULTS
                / "eval"
                / "training_free"
                / "{method}"
                / "{suite}"
                / "suite.json",
                method=TRAINING_FREE,
                suite=MODEL_SUITES,
            ),
            *expand(
                RESULTS / "eval" / "finetuned" / "{ft}" / "{suite}" / "suite.json",
                ft=FINETUNED,
                suite=MODEL_SUITES,
            ),
        ],
    output:
        csv=report(
            RULER_TABLES / "ruler.csv",
            caption="../report/ruler.rst",
            category="5. RULER",
        ),
        md=report(
            RULER_TABLES / "ruler.md",
            caption="../report/ruler.rst",
            category="5. RULER",
        ),
        tex=RULER_TABLES / "ruler.tex",
        tasks=report(
            RULER_TABLES / "ruler_tasks.csv",
            caption="../report/ruler_tasks.rst",
            category="5. RULER",
        ),
        comparisons=report(
            RULER_TABLES / "comparisons.csv",
            caption="../report/comparisons.rst",
            category="5. RULER",
        ),
        retention=report(
            RULER_TABLES / "retention.csv",
            caption="../report/retention.rst",
            category="5. RULER",
        ),
        grid=RULER_TABLES / "niah_grid.csv",
        suites=report(
            RULER_TABLES / "suites.csv",
            caption="../report/suites.rst",
            category="5. RULER",
        ),
        suites_retention=RULER_TABLES / "suites_retention.csv",
        passkey=report(
            RULER_TABLES / "passkey.csv",
            caption="../report/passkey.rst",
            category="5. RULER",
        ),
        figure=report(
            RULER_TABLES / "ruler_vs_length.png",
            caption="../report/ruler.rst",
            category="5. RULER",
        ),
        heatmaps=report(
            RULER_TABLES / "niah_heatmaps.png",
            caption="../report/niah.rst",
            category="5. RULER",
        ),
        manifest=RULER_TABLES / "manifest.json",
    log:
        LOGS / "table_ruler.log",
    benchmark:
        BENCH / "table_ruler.tsv"
    localrule: True
    conda:
        "../envs/longrope2.yaml"
    threads: RES["ruler-tables"]["threads"]
    resources:
        mem_mb=RES["ruler-tables"]["mem_mb"],
        runtime=runtime("ruler-tables"),
    params:
        config=stage_config("ruler-tables"),
        suites=lambda wildcards, input: (
            "--suites " + " ".join(shlex.quote(str(p)) for p in input.suites)
            if input.suites
            else ""
        ),
        out=folder("manifest"),
    shell:
        "longrope2 ruler-tables --config-json {params.config:q} --scores {input.scores:q} "
        "{params.suites} --out {params.out:q} > {log:q} 2>&1"


rule suite_training_free:
    """LongBench or MMLU (lm-eval's own tasks) of one method's export, before fine-tuning."""
    input:
        model=RESULTS / "models" / "training_free" / "{method}" / "model",
    output:
        result=RESULTS
        / "eval"
        / "training_free"
        / "{method}"
        / "{suite}"
        / "suite.json",
        samples=RESULTS
        / "eval"
        / "training_free"
        / "{method}"
        / "{suite}"
        / "samples.jsonl",
        manifest=RESULTS
        / "eval"
        / "training_free"
        / "{method}"
        / "{suite}"
        / "manifest.json",
    log:
        LOGS / "suite_training_free_{method}_{suite}.log",
    benchmark:
        BENCH / "suite_training_free_{method}_{suite}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["suite"]["threads"]
    resources:
        mem_mb=RES["suite"]["mem_mb"],
        runtime=runtime("suite"),
        gpu=RES["suite"]["gpu"],
    params:
        config=stage_config("suite"),
        window=suite_window,
        out=folder("manifest"),
    shell:
        "longrope2 suite --config-json {params.config:q} --threads {threads} --suite {wildcards.suite} "
        "--model {input.model:q} --max-length {params.window} --label {wildcards.method} "
        "--stage-label training-free --out {params.out:q} > {log:q} 2>&1"


rule suite_finetuned:
    """LongBench or MMLU (lm-eval's own tasks) of one fine-tuned model."""
    input:
        model=RESULTS / "finetune" / "{ft}" / "model",
    output:
        result=RESULTS / "eval" / "finetuned" / "{ft}" / "{suite}" / "suite.json",
        samples=RESULTS / "eval" / "finetuned" / "{ft}" / "{suite}" / "samples.jsonl",
        manifest=RESULTS / "eval" / "finetuned" / "{ft}" / "{suite}" / "manifest.json",
    log:
        LOGS / "suite_finetuned_{ft}_{suite}.log",
    benchmark:
        BENCH / "suite_finetuned_{ft}_{suite}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["suite"]["threads"]
    resources:
        mem_mb=RES["suite"]["mem_mb"],
        runtime=runtime("suite"),
        gpu=RES["suite"]["gpu"],
    params:
        config=stage_config("suite"),
        window=suite_window,
        out=folder("manifest"),
    shell:
        "longrope2 suite --config-json {params.config:q} --threads {threads} --suite {wildcards.suite} "
        "--model {input.model:q} --max-length {params.window} --label {wildcards.ft} "
        "--stage-label after --out {params.out:q} > {log:q} 2>&1"
