// filters/dmarc/dmarc.h — the DMARC (RFC 7489) unit in one include: record parsing,
// Organizational Domains, From-domain extraction, evaluation, and the filter.
#pragma once
#include "filters/dmarc/dmarc_filter.h"
#include "filters/dmarc/evaluate.h"
#include "filters/dmarc/from_header.h"
#include "filters/dmarc/org_domain.h"
#include "filters/dmarc/record.h"
