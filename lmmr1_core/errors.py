"""User-facing errors: the CLI prints these as one message, without a traceback."""


class LmmError(Exception):
    """Something the user can fix (a file, a key, a plugin name); shown without a traceback."""


class ConfigError(LmmError):
    pass


class PluginError(LmmError):
    pass


class DataError(LmmError):
    pass


class RewardError(LmmError):
    pass
