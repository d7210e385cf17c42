"""The megatron-core model backend (``model.backend: megatron``); see ``backend.py`` and docs/megatron.md."""
