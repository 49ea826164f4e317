"""What every virtualenv of the project imports: standard-library modules shared by `service/`, `training/`,
the tests, the benchmarks and the deploy checks.

`service/` and `training/` never import each other (different virtualenvs, see ARCHITECTURE.md); what they
must agree on lives here instead: the default tool-calling prompt format (`tool_prompt`), which weights a
model directory holds (`model_identity`), the flag generator every command line uses (`cli_flags`), the
default model's path (`default_model`), and how to start and stop a server process (`launcher`). Standard
library only, so any of the environments can import it from a checkout or an image.
"""
