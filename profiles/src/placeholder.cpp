namespace yilian { int profiles_placeholder = 0; }
