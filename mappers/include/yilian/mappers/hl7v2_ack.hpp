// HL7 v2 acknowledgments (ACK): the answer to a received message, with the parser's or the
// mapper's problems as ERR segments.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "yilian/mappers/hl7v2.hpp"

namespace yilian::mappers::hl7v2 {

// MSA-1 (table 0008). AA/AE/AR are application acknowledgments (original mode, or the application
// level of enhanced mode); CA/CE/CR are the accept (commit) acknowledgments of enhanced mode.
enum class ack_code { AA, AE, AR, CA, CE, CR };

std::string_view to_string(ack_code code) noexcept;

// Whether the sender asked for enhanced acknowledgment (MSH-15 or MSH-16 valued).
bool wants_enhanced_acknowledgment(const message& received);

// The accept-level code (CA/CE/CR) for an application-level one, and back.
ack_code accept_level(ack_code code) noexcept;

// The ER7 ACK for `received` (null when the input could not be parsed at all: then a minimal
// v2.5 ACK). MSH: sender and receiver swapped, MSH-7 `now_ts`, MSH-9 ACK^<event>^ACK, MSH-10
// `ack_control_id`, MSH-11/12/18 and the delimiters of the received message; MSA: `code`, the
// received MSH-10 and (before v2.7, where MSA-3 was withdrawn) the first error's text. Each
// problem becomes an ERR: from v2.5 one ERR per problem with ERR-2 location
// (SEG^occurrence^field^repetition^component^subcomponent), ERR-3 code^text^HL70357, ERR-4 E/W and
// ERR-8 the message; for v2.3/2.4 one ERR whose repeating ERR-1 holds
// SEG^occurrence^field^code&text&HL70357 per problem. Returned in the charset of MSH-18.
std::string make_ack(const message* received, ack_code code, const std::vector<problem>& problems,
                     std::string_view ack_control_id, std::string_view now_ts);

// HL7 table 0357 text for a code ("Required field missing").
std::string_view error_text(error_code code) noexcept;

}  // namespace yilian::mappers::hl7v2
