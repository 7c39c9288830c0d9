// The whole user-facing API: #include <troupe/troupe.hpp>.
#pragma once

#include "troupe/runtime/actor.hpp"
#include "troupe/runtime/error.hpp"
#include "troupe/runtime/logging.hpp"
#include "troupe/runtime/nodes.hpp"
#include "troupe/runtime/object_ref.hpp"
#include "troupe/runtime/runtime.hpp"
#include "troupe/runtime/serialization.hpp"
#include "troupe/runtime/tensor.hpp"
