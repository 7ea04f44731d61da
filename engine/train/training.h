// Training graph assembly and a single-device training session through the C++ API.
#pragma once

namespace trainer::engine {}
