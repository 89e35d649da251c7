"""The WebUI side of BK-SDM: the only code that imports AUTOMATIC1111's ``modules``."""
