"""Views: text tables and plots that read finished results and never recompute."""
