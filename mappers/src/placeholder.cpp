namespace yilian { int mappers_placeholder = 0; }
