#include "yilian/fhir/fhirpath.hpp"

#include <doctest/doctest.h>

TEST_CASE("fhirpath: placeholder") { CHECK(true); }
