"""Configs saved under arguments' former names, read under their new ones."""


def renamed_arguments(config, renames):
    """A copy of `config` with each key `old` of `renames` named `new`.

    `from_config` of a class whose argument was renamed calls it, so that
    models saved before the rename still load.

    Example:

    >>> renamed_arguments({"num_groups": 2}, {"num_groups": "expert_groups"})
    {'expert_groups': 2}
    """
    config = dict(config)
    for old, new in renames.items():
        if old in config:
            config[new] = config.pop(old)
    return config
