// libFuzzer target for the HL7 v2 parser and ACK builder (tests/fuzz/README.md says how to run it).
// Whatever the bytes: no crash, no hang, no sanitizer report; a message that parsed encodes to text
// that parses again; and the ACK built for it (or for the refusal) is itself a clean message.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "yilian/mappers/hl7v2.hpp"
#include "yilian/mappers/hl7v2_ack.hpp"

namespace hl7 = yilian::mappers::hl7v2;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const hl7::parse_result result = hl7::parse(bytes);
  if (!result.parsed && result.problems.empty()) std::abort();  // a refusal always says why
  const hl7::message* received = result.parsed ? &*result.parsed : nullptr;
  if (received) {
    const hl7::parse_result again = hl7::parse(hl7::encode(*received));
    if (!again.parsed || again.parsed->segments.size() != received->segments.size()) std::abort();
    for (const hl7::segment* s : received->all("OBX")) (void)s->value(5, 1, 1, 1);
    (void)received->value("PID-3(2).4.1");
  }
  const hl7::ack_code code = result.ok() ? hl7::ack_code::AA : hl7::ack_code::AE;
  const std::string ack = hl7::make_ack(received, code, result.problems, "FUZZ", "20260101000000");
  const hl7::parse_result ack_parsed = hl7::parse(ack);
  if (!ack_parsed.parsed || ack_parsed.parsed->message_type() != "ACK") std::abort();
  return 0;
}
