rule needles:
    """Needle-PPL / plain-PPL sets at the target length: what the factor search scores candidates on."""
    input:
        corpus=CORPUS_FILES,
        tokenizer=tokenizer(),
    output:
        meta=RESULTS / "needles" / "needles.json",
        search=expand(
            RESULTS / "needles" / "{split}_{kind}.npz",
            split=["search", "heldout"],
            kind=["needle", "plain"],
        ),
        manifest=RESULTS / "needles" / "manifest.json",
    log:
        LOGS / "needles.log",
    benchmark:
        BENCH / "needles.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["needles"]["threads"]
    resources:
        mem_mb=RES["needles"]["mem_mb"],
        runtime=runtime("needles"),
    params:
        config=stage_config("needles"),
        corpus=CORPUS,
        out=folder("manifest"),
    shell:
        "longrope2 needles --config-json {params.config:q} --corpus {params.corpus:q} "
        "--tokenizer {input.tokenizer:q} --out {params.out:q} > {log:q} 2>&1"


rule search:
    """Evolutionary factor search of one method (LongRoPE2, LongRoPE v1, or an ablation); resumable."""
    input:
        model=base_model(),
        sets=rules.needles.output.search,
    output:
        factors=RESULTS / "search" / "{searched}" / "factors.json",
        trace=RESULTS / "search" / "{searched}" / "trace.csv",
        figure=report(
            RESULTS / "search" / "{searched}" / "search.png",
            caption="../report/search.rst",
            category="3. Factor search",
            subcategory="{searched}",
        ),
        manifest=RESULTS / "search" / "{searched}" / "manifest.json",
    log:
        LOGS / "search_{searched}.log",
    benchmark:
        BENCH / "search_{searched}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["search"]["threads"]
    resources:
        mem_mb=RES["search"]["mem_mb"],
        runtime=runtime("search"),
        gpu=RES["search"]["gpu"],
    params:
        config=stage_config("search"),
        devices=devices,
        needles=RESULTS / "needles",
        checkpoints=lambda wildcards: RESULTS
        / ".checkpoints"
        / f"search-{wildcards.searched}",
        out=folder("manifest"),
    shell:
        "longrope2 search --config-json {params.config:q} --threads {threads} --model {input.model:q} "
        "--needles {params.needles:q} --method {wildcards.searched} {params.devices} "
        "--checkpoint-dir {params.checkpoints:q} --out {params.out:q} > {log:q} 2>&1"


rule factor_shape:
    """The searched LongRoPE2 factors against the paper's shape: NTK-like below d_rcd, searched above."""
    input:
        factors=method_factors("longrope2"),
    output:
        figure=report(
            RESULTS / "factor_shape" / "factor_shape.png",
            caption="../report/factor_shape.rst",
            category="3. Factor search",
        ),
        json=RESULTS / "factor_shape" / "factor_shape.json",
        manifest=RESULTS / "factor_shape" / "manifest.json",
    log:
        LOGS / "factor_shape.log",
    benchmark:
        BENCH / "factor_shape.tsv"
    localrule: True
    conda:
        "../envs/longrope2.yaml"
    threads: RES["factor_shape"]["threads"]
    resources:
        mem_mb=RES["factor_shape"]["mem_mb"],
        runtime=runtime("factor_shape"),
    params:
        config=stage_config("factor-shape"),
        out=folder("manifest"),
    shell:
        "longrope2 factor-shape --config-json {params.config:q} --factors {input.factors:q} "
        "--out {params.out:q} > {log:q} 2>&1"


rule baseline:
    """PI, NTK, YaRN from the geometry; NTK-rcd / YaRN-rcd also from the LongRoPE2 search's d_rcd; published
    factors (fixed_factors); a checkpoint's own rope parameters (as_is)."""
    input:
        searched=searched_factors,
        model=checkpoint_model,
    output:
        factors=RESULTS / "factors" / "{baseline}" / "factors.json",
        manifest=RESULTS / "factors" / "{baseline}" / "manifest.json",
    log:
        LOGS / "baseline_{baseline}.log",
    benchmark:
        BENCH / "baseline_{baseline}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["baseline"]["threads"]
    resources:
        mem_mb=RES["baseline"]["mem_mb"],
        runtime=runtime("baseline"),
    params:
        config=baseline_config,
        searched=optional_input("--searched", "searched"),
        model=optional_input("--model", "model"),
        out=folder("manifest"),
    shell:
        "longrope2 baseline --config-json {params.config:q} --method {wildcards.baseline} "
        "{params.searched} {params.model} --out {params.out:q} > {log:q} 2>&1"


rule export:
    """A method as a stock-transformers checkpoint: config.json with its rope parameters, linked weights."""
    input:
        model=training_free_model,
        factors=factors_file,
    output:
        model=directory(RESULTS / "models" / "training_free" / "{method}" / "model"),
        rope=RESULTS / "models" / "training_free" / "{method}" / "rope.json",
        manifest=RESULTS / "models" / "training_free" / "{method}" / "manifest.json",
    log:
        LOGS / "export_{method}.log",
    benchmark:
        BENCH / "export_{method}.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: RES["export"]["threads"]
    resources:
        mem_mb=RES["export"]["mem_mb"],
        runtime=runtime("export"),
    params:
        config=stage_config("export"),
        out=folder("manifest"),
    shell:
        "longrope2 export --config-json {params.config:q} --model {input.model:q} "
        "--factors {input.factors:q} --out {params.out:q} > {log:q} 2>&1"
