"""Where inputs and models come from: one provider per kind of URL, behind a download cache."""
