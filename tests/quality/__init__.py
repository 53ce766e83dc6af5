"""The probe suite (CheckList-style minimum-functionality tests): data, generator and runner."""
