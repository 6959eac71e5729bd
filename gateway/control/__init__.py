"""Runtime control: route changes by admin call, config reload, and their audit trail."""
