// Training graph assembly.
#include "engine/train/training.h"
