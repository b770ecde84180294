// mp_hal_time_ns for the qemu port's MPS2-AN385 board, which has no real-time clock:
// nanoseconds since boot from the port's microsecond ticks (littlefs stamps files with it).
#include "py/mphal.h"

uint64_t mp_hal_time_ns(void) {
    return (uint64_t)mp_hal_ticks_us() * 1000u;
}
