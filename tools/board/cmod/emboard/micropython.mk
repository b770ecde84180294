# The MPS2-AN385 board's missing HAL piece for littlefs (MICROPY_VFS_LFS2=1): a clock for mtime.
EMBOARD_MOD_DIR := $(USERMOD_DIR)
SRC_USERMOD_C += $(EMBOARD_MOD_DIR)/emboard_hal.c
