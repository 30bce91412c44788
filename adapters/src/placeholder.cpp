namespace yilian { int adapters_placeholder = 0; }
