rule needles:
    """Needle-PPL / plain-PPL sets at the target (search) and at every evaluation length."""
    input:
        corpus=rules.corpus.output.meta,
        model=base_model(),
    output:
        meta=RESULTS / "needles" / "needles.json",
        search=expand(
            RESULTS / "needles" / "search_{kind}.npz", kind=["needle", "plain"]
        ),
        manifest=RESULTS / "needles" / "manifest.json",
    log:
        LOGS / "needles.log",
    benchmark:
        BENCH / "needles.tsv"
    conda:
        "../envs/longrope2.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cmd=stage_cmd("needles"),
        needles=config["needles"],
    shell:
        "{params.cmd} --corpus $(dirname {input.corpus}) --tokenizer {input.model} "
        "--out $(dirname {output.meta}) > {log} 2>&1"


rule search:
    """Evolutionary factor search of one method (LongRoPE2, LongRoPE v1, or an ablation); resumable."""
    input:
        model=base_model(),
        needles=rules.needles.output.meta,
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
    retries: 1
    conda:
        "../envs/longrope2.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=lambda wc, attempt: 120 * attempt,
    params:
        cmd=stage_cmd("search"),
        checkpoints=lambda wc: RESULTS / ".checkpoints" / f"search-{wc.searched}",
        search=config["search"],
    shell:
        "{params.cmd} --threads {threads} --model {input.model} --needles $(dirname {input.needles}) "
        "--method {wildcards.searched} --checkpoint-dir {params.checkpoints} "
        "--out $(dirname {output.factors}) > {log} 2>&1"


rule baselines:
    """PI, NTK, YaRN and the d_rcd-anchored NTK-rcd / YaRN-rcd straight from the RoPE core."""
    input:
        searched=RESULTS / "search" / "longrope2" / "factors.json",
    output:
        factors=expand(RESULTS / "factors" / "{baseline}.json", baseline=BASELINES),
        manifest=RESULTS / "factors" / "manifest.json",
    log:
        LOGS / "baselines.log",
    conda:
        "../envs/longrope2.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        cmd=stage_cmd("baselines"),
        geometry=config["model"]["geometry"],
    shell:
        "{params.cmd} --searched {input.searched} --out $(dirname {output.manifest}) > {log} 2>&1"


rule export:
    """A method as a stock-transformers checkpoint (rope parameters in config.json, no remote code)."""
    input:
        model=base_model(),
        factors=factors_file,
    output:
        model=directory(RESULTS / "models" / "training_free" / "{method}" / "model"),
        rope=RESULTS / "models" / "training_free" / "{method}" / "rope.json",
        manifest=RESULTS / "models" / "training_free" / "{method}" / "manifest.json",
    log:
        LOGS / "export_{method}.log",
    conda:
        "../envs/longrope2.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        cmd=stage_cmd("export"),
        geometry=config["model"]["geometry"],
    shell:
        "{params.cmd} --model {input.model} --factors {input.factors} "
        "--out $(dirname {output.rope}) > {log} 2>&1"
