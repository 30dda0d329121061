"""The corpus perplexity of a compiled language model on a dataset."""


def evaluate_perplexity(model, dataset, callbacks=None):
    """Runs `model.evaluate` over `dataset`; returns its perplexity.

    The model must be compiled with a `sgmoe.models.Perplexity` metric
    under its default name, "perplexity"; the value is that metric over
    the whole dataset (the corpus perplexity), not a mean over batches.

    Args:
        model: a compiled, built language model.
        dataset: batches of (inputs, targets), as `model.evaluate` takes
            them.
        callbacks: passed to `model.evaluate` (e.g.
            `[sgmoe.distribute.SynchronousBatches()]` on a mesh), or None.

    Returns:
        The perplexity, a Python float.

    Raises:
        ValueError: the model logs no "perplexity" metric.

    Example:

    model.compile(optimizer="adam", metrics=[Perplexity(padding_id=0)])
    perplexity = evaluate_perplexity(model, eval_data)
    """
    results = model.evaluate(dataset, verbose=0, return_dict=True,
                             callbacks=callbacks)
    if "perplexity" not in results:
        raise ValueError(
            "`model` must be compiled with a sgmoe.models.Perplexity metric "
            "named 'perplexity'; its evaluation logs "
            f"{sorted(results)}.")
    return float(results["perplexity"])
