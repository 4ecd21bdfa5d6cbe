"""The benchmarks behind `python bench.py` (which is their command line only), one job per module:

    harness     one clock, one interleaving loop, and the comparison of decoders (speedup, CR, acceptance)
    models      the checkpoints and prompts a benchmark decodes, at a precision (--dtype), with a draft vocabulary
    precision   the machine a result was measured on, and near ties: outputs that differ only by rounding
    speed       toy settings, the γ study, the cost of n tree rows
    tasks       every method side by side (real tasks, toy), training recipes, drafting cost
    profile     one decode call of generate.py, timed part by part through hooks
    sampling    temperature > 0: acceptance vs temperature, the distribution test
    throughput  batch > 1: batched AR vs batched SS
    params      parameter accounting
    baselines   the decoders we compare against: prompt lookup, two-model speculative decoding
    report      quality metrics, tables and plots written to results/
"""
