"""fusioncam: where a vision-language model looks."""
